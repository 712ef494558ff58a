"""Bug: an encoder-decoder regression with one optimizer per part (different learning
rates); the loop clears the decoder optimizer's gradients but forgot the encoder's, so the
encoder's gradients pile up step after step."""
import torch
from torch import nn

torch.set_num_threads(1)
torch.manual_seed(29)

encoder = nn.Sequential(nn.Linear(16, 32), nn.Tanh(), nn.Linear(32, 8))
decoder = nn.Sequential(nn.Linear(8, 32), nn.Tanh(), nn.Linear(32, 16))
enc_opt = torch.optim.SGD(encoder.parameters(), lr=0.01, momentum=0.9)
dec_opt = torch.optim.Adam(decoder.parameters(), lr=1e-3)

data = torch.randn(2000, 4) @ torch.randn(4, 16)     # rank-4 data: an 8-d code suffices
for step in range(60):
    x = data[torch.randint(0, 2000, (64,))]
    recon = decoder(encoder(x))
    loss = nn.functional.mse_loss(recon, x)
    dec_opt.zero_grad()                              # BUG: enc_opt.zero_grad() missing
    loss.backward()
    enc_opt.step()
    dec_opt.step()
    if step % 10 == 0:
        print(step, round(loss.item(), 4))
