"""The exponential moving average of a model's weights (basics/ema.py)."""
import torch

from basics.ema import WeightAverage


def test_the_average_follows_both_models_and_copies_integer_buffers():
    model = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.BatchNorm1d(3))
    ema = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.BatchNorm1d(3))
    average = WeightAverage(ema, model)
    for step in range(2):  # the tensor lists gathered once still follow both models
        with torch.no_grad():
            model[0].weight.fill_(1.0 + step)
            ema[0].weight.fill_(0.0)
            model[1].running_mean.fill_(4.0)
            model[1].num_batches_tracked.fill_(7 + step)
        average.update(decay=0.75)
        assert torch.allclose(ema[0].weight, torch.full_like(ema[0].weight, 0.25 * (1 + step)))
        assert torch.allclose(ema[1].running_mean, torch.full((3,), 1.0 + 0.75 * step))
        assert int(ema[1].num_batches_tracked) == 7 + step
