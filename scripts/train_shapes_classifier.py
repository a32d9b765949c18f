"""Train the Shapes classifier behind the Shapes Fréchet distance and write its shipped weights.

Trains :class:`ldmkit_shapes.classifier.ShapesClassifier` on procedurally generated single-object Shapes
pictures (class of the object, and its box), then reports the class accuracy and the mean box error on
held-out pictures. Deterministic for a given torch build; takes a few minutes on two CPU cores.

    PYTHONPATH=$PWD:$PWD/plugins python scripts/train_shapes_classifier.py
    PYTHONPATH=$PWD:$PWD/plugins python scripts/train_shapes_classifier.py --out /tmp/c.safetensors --train 2000
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from ldmkit.checkpoints import save_state_dict
from ldmkit_shapes.classifier import ShapesClassifier, predict, weights_path
from ldmkit_shapes.dataset import ShapesDataset

log = logging.getLogger("train_shapes_classifier")

TRAIN_SEED = 11  # the LDM specs and the evaluation draw other seeds
TEST_SEED = 12
BOX_WEIGHT = 2.0


def pictures(seed: int, n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Single-object pictures (N, 3, 64, 64), class ids (N,) and boxes (N, 4) as fractions."""
    batch = ShapesDataset.from_params({"seed": seed, "single_object": True}).batch(range(n))
    boxes = torch.tensor([layout[0]["box"] for layout in batch["layout"]], dtype=torch.float32)
    return batch["image"], batch["class_label"], boxes


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=weights_path(), help="weights file (default: the shipped one)")
    p.add_argument("--train", type=int, default=24_000, help="training pictures")
    p.add_argument("--test", type=int, default=4_000, help="held-out pictures")
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu", help="cpu or cuda (the pictures are rendered on the CPU either way)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)

    t0 = time.perf_counter()
    images, labels, boxes = pictures(TRAIN_SEED, args.train)
    test_images, test_labels, test_boxes = pictures(TEST_SEED, args.test)
    log.info("rendered %d + %d pictures in %.1f s", args.train, args.test, time.perf_counter() - t0)

    device = torch.device(args.device)
    images, labels, boxes = images.to(device), labels.to(device), boxes.to(device)
    model = ShapesClassifier().to(device)
    steps = args.epochs * (args.train // args.batch)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, total_steps=steps, pct_start=0.1)
    gen = torch.Generator().manual_seed(0)
    step = 0
    for epoch in range(args.epochs):
        order = torch.randperm(args.train, generator=gen).to(device)
        for start in range(0, args.train - args.batch + 1, args.batch):
            idx = order[start : start + args.batch]
            logits, box = model(images[idx])  # (B, 18), (B, 4)
            loss = F.cross_entropy(logits, labels[idx]) + BOX_WEIGHT * F.l1_loss(box, boxes[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            step += 1
            if step % 50 == 0:
                log.info("epoch %d step %d/%d loss %.4f", epoch, step, steps, loss.item())

    model.eval()
    with torch.no_grad():
        accuracy = float((predict(model, test_images) == test_labels).float().mean())
        predicted = [model(test_images[i : i + 512].to(device))[1].cpu() for i in range(0, args.test, 512)]
        box_error = float(torch.cat(predicted).sub(test_boxes).abs().mean())
    report = {
        "test_accuracy": round(accuracy, 4),
        "test_box_mae_pixels": round(box_error * 64, 3),
        "train_pictures": args.train,
        "test_pictures": args.test,
        "epochs": args.epochs,
        "train_seed": TRAIN_SEED,
        "test_seed": TEST_SEED,
    }
    log.info("held-out: %s (%.0f s)", json.dumps(report), time.perf_counter() - t0)
    report["device"] = args.device
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_state_dict(state, args.out, metadata={k: str(v) for k, v in report.items()})
    log.info("wrote %s", args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
