"""ml.optim.Adam against torch.optim.Adam: the same parameters after every step."""

import pytest

torch = pytest.importorskip("torch")

from ml.optim import Adam  # noqa: E402


def test_adam_matches_torch_optim_step_by_step():
    torch.manual_seed(3)
    ours = torch.nn.Sequential(torch.nn.Embedding(20, 6, padding_idx=0), torch.nn.Linear(6, 4))
    theirs = torch.nn.Sequential(torch.nn.Embedding(20, 6, padding_idx=0), torch.nn.Linear(6, 4))
    theirs.load_state_dict(ours.state_dict())
    start = ours[1].weight.detach().clone()
    mine = Adam(list(ours.parameters()), lr=0.05, betas=(0.8, 0.99))
    reference = torch.optim.Adam(theirs.parameters(), lr=0.05, betas=(0.8, 0.99), foreach=False)
    for step in range(25):
        x = torch.randint(0, 20, (16, 3))
        target = torch.randint(0, 4, (16 * 3,))
        for net, optimizer in ((ours, mine), (theirs, reference)):
            loss = torch.nn.functional.cross_entropy(net(x).reshape(-1, 4), target)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        if step == 12:  # a rate changed between steps, as the per-epoch decay does
            mine.lr = 0.01
            reference.param_groups[0]["lr"] = 0.01
        for a, b in zip(ours.parameters(), theirs.parameters(), strict=True):
            assert torch.allclose(a, b, rtol=1e-5, atol=1e-6), f"step {step}"
    assert (ours[1].weight - start).abs().min() > 1e-3  # every weight moved: a real comparison
