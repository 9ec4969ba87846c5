"""The plain PyTorch loop bench/small_table.py compares `ceag run` with (run in the table's folder)."""

import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

df = pd.read_csv("t.csv")
y = torch.tensor((df.pop("y") == "yes").values).long()
x = pd.get_dummies(df, dtype=float)
x = torch.tensor(((x - x.mean()) / x.std().replace(0, 1)).values, dtype=torch.float32)
n = len(x)
cut = int(0.7 * n)
model = nn.Sequential(nn.Linear(x.shape[1], 512), nn.ReLU(), nn.Linear(512, 512), nn.ReLU(), nn.Linear(512, 2))
opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
for _epoch in range(50):
    perm = torch.randperm(cut)
    for i in range(0, cut, 256):
        idx = perm[i : i + 256]
        loss = F.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        acc_tr = (model(x[:cut]).argmax(1) == y[:cut]).float().mean()
        acc_te = (model(x[cut:]).argmax(1) == y[cut:]).float().mean()
print(float(acc_tr), float(acc_te))
