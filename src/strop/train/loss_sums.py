"""Loss, unit and metric sums over the micro-batches of a step (or an eval pass), reduced
over ranks in one place: the loop's normalisation by the global count of loss units."""

from __future__ import annotations

import torch


class LossSums:
    """Loss, unit count and metric sums over micro-batches, reduced over ranks in one place.

    A metric ``k`` is averaged per unit, unless the objective also reports ``k#n``: then it
    is ``sum(k) / sum(k#n)`` (e.g. a reward averaged over desirable examples only)."""

    def __init__(self, device):
        self.device = device
        self.loss = torch.zeros((), dtype=torch.float64, device=device)
        self.units = torch.zeros((), dtype=torch.float64, device=device)
        self.metrics: dict[str, torch.Tensor] = {}

    def add(self, out: dict) -> None:
        self.loss += out["loss_sum"].detach().double()
        self.units += out["units"].double()
        for k, v in out.get("metrics", {}).items():
            self.metrics[k] = self.metrics.get(k, 0) + v.detach().double()

    def reduce(self, d, n_global: torch.Tensor | None = None) -> tuple[float, dict]:
        """(loss per unit, metrics); ``n_global``: the step's unit count, already summed."""
        n = (d.all_sum(self.units.clone()) if n_global is None else n_global).clamp(min=1)
        loss = (d.all_sum(self.loss) / n).item()
        totals = {
            k: d.all_sum(torch.as_tensor(v, device=self.device)) for k, v in self.metrics.items()
        }
        metrics = {
            k: (v / (totals[f"{k}#n"].clamp(min=1) if f"{k}#n" in totals else n)).item()
            for k, v in sorted(totals.items())
            if not k.endswith("#n")
        }
        return loss, metrics
