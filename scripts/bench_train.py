"""Training throughput: the real DataModule against the model alone on in-memory tensors, for one
view (the book's crop) and for three views of each candidate (MultiViewLunaModel).

    python scripts/bench_train.py [--steps 20] [--batch_size 32] [--num_workers 2]

Both sides run the same LunaClassifier training step (forward, loss, backward, optimizer step) at
the same batch size, one after the other in this process; the loader ratio says whether the
loader is ever the bottleneck (1.0 = it costs nothing), and the three-view line gives its
throughput as a ratio of the one-view line's. On a GPU, the same is measured with bf16 autocast.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from pytorch_lightning.utilities import move_data_to_device

from luna.data.crops import View
from luna.luna16.datamodule import LunaDataModule
from luna.luna16.phantom import PhantomSpec
from luna.training.module import LunaClassifier


def samples_per_second(
    module: LunaClassifier, batches, steps: int, device: torch.device, autocast: bool
) -> float:
    optimizer = module.configure_optimizers()
    iterator = iter(batches)
    for step in range(steps + 3):  # three warm-up steps
        if step == 3:
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
        batch = next(iterator)
        batch = move_data_to_device(batch, device)
        batch = module.on_after_batch_transfer(batch, 0)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
            loss = module.training_step(batch, step)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return steps * batch["label"].shape[0] / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--num_workers", type=int, default=2)
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "luna-bench-train")
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    views = {  # the three fields of view of scripts/bench_physical.py (Dou et al. 2017's idea)
        "one view, 32x48x48 native": {},
        "three views, 16x32x32 + 32x48x48 at 1.25x0.7x0.7 mm + 32x48x48 at 2.5x1.4x1.4 mm": {
            "width_irc": (16, 32, 32),
            "spacing_mm": (1.25, 0.7, 0.7),
            "extra_views": [View((32, 48, 48), (1.25, 0.7, 0.7)), View((32, 48, 48), (2.5, 1.4, 1.4))],
        },
    }
    settings = [False] + ([True] if device.type == "cuda" else [])
    results: dict[tuple[str, bool], float] = {}
    for name, data in views.items():
        datamodule = LunaDataModule(
            None,
            cache_dir=args.workdir / "cache",
            batch_size=args.batch_size,
            num_workers=args.num_workers,
            negatives_per_positive=1,
            samples_per_epoch=args.batch_size * (args.steps + 3),
            phantom=PhantomSpec(series=20, seed=0),
            **data,
        )
        datamodule.prepare_data()
        datamodule.setup("fit")
        module = LunaClassifier(input_widths_irc=datamodule.input_widths_irc).to(device)
        module.log = lambda *a, **k: None  # no Trainer here: logging is not what is measured
        module.trainer = type(
            "Stub", (), {"training": True, "estimated_stepping_batches": args.steps, "global_step": 0}
        )()
        fixed = next(iter(datamodule.train_dataloader()))
        for autocast in settings:
            model_alone = samples_per_second(
                module, iter(lambda fixed=fixed: fixed, None), args.steps, device, autocast
            )
            with_loader = samples_per_second(
                module, datamodule.train_dataloader(), args.steps, device, autocast
            )
            results[name, autocast] = with_loader
            label = "bf16 autocast, channels_last_3d" if autocast else "fp32, channels_last_3d"
            print(
                f"[{device.type}, {label}] {name}: model alone {model_alone:.1f} samples/s, through "
                f"LunaDataModule {with_loader:.1f} samples/s: loader ratio {with_loader / model_alone:.2f}"
            )
    one, three = views
    for autocast in settings:
        print(
            f"[{device.type}{', bf16' if autocast else ''}] three views / one view, through the DataModule: "
            f"{results[three, autocast] / results[one, autocast]:.2f}x the samples/s"
        )


if __name__ == "__main__":
    main()
