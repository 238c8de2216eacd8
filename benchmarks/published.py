"""Published Fashion-MNIST rows (ConvNet-3 students unless the protocol says otherwise), printed
beside ours as "published, not run here". Collected in ../shared/docs/research/fmnist-records.md;
`verified` is True only where the number was read in its source (the official README, or the KIP
submission's table); the rest are quoted from memory or from later papers and say so.

A published row may stand beside ours only with its protocol: the field's lengths, labels and
networks differ (docs/protocols.md), so a row of another protocol is context, not a comparison.
"""

from __future__ import annotations

from typing import NamedTuple


class Published(NamedTuple):
    method: str
    ipc: int
    mean: float  # %
    std: float | None
    protocol: str  # ours where it is the same recipe (dc, dsa), else the paper's own, in words
    source: str
    verified: bool


DC_TABLE = "DC paper (Zhao, Mopuri & Bilen, ICLR 2021), Table 1"
DC_README = "VICO-UoE/DatasetCondensation README, Tables 1-2 (std: KIP submission, Table 1)"
KIP_SUBMISSION = "KIP NeurIPS-2021 submission text, Table 2 (KIP to NN)"
IDC_README = "snu-mllab/Efficient-Dataset-Condensation README"
IDC_PROTOCOL = "IDC's: 1000 epochs SGD, DSA + CutMix, 4 half-size images per stored image"
LEARNED = "learned labels, Adam 1-2k steps, ConvNet-3 without normalisation"


def _rows(method: str, values: dict, protocol: str, source: str, verified: bool) -> list[Published]:
    return [Published(method, ipc, *(v if isinstance(v, tuple) else (v, None)), protocol, source, verified)
            for ipc, v in values.items()]


PUBLISHED: list[Published] = [
    # coresets, trained as DC trains its synthetic sets (our `dc` protocol)
    *_rows("random", {1: (51.4, 3.8), 10: (73.8, 0.7), 50: (82.5, 0.7)}, "dc", DC_TABLE, False),
    *_rows("herding", {1: (67.0, 1.9), 10: (71.1, 0.7), 50: (71.9, 0.8)}, "dc", DC_TABLE, False),
    *_rows("DC", {1: (70.5, 0.6), 10: (82.3, 0.4), 50: (83.6, 0.4)}, "dc", DC_README, True),
    *_rows("DSA", {1: (70.6, 0.6), 10: (84.6, 0.3), 50: (88.7, 0.2)}, "dsa", DC_README, True),
    *_rows("DM", {1: 70.7, 10: 83.5, 50: 88.1}, "dsa", "later papers' tables (no author number)", False),
    *_rows("MTT", {1: (75.1, 0.9), 10: (87.2, 0.3), 50: (88.3, 0.1)}, "MTT's: 1000 epochs, DSA, learned student lr",
           "reproductions in later papers (MTT reports no Fashion-MNIST)", False),
    *_rows("CAFE", {1: (77.1, 0.9), 10: (83.0, 0.4), 50: (84.8, 0.4)}, "dc", "CAFE paper, Table 1", False),
    *_rows("IDC", {10: 86.0}, IDC_PROTOCOL, IDC_README, True),
    *_rows("KIP to NN", {1: 73.8, 10: 86.8, 50: 87.8}, "KIP's: learned labels, ConvNet up to width 1024 without "
           "normalisation", KIP_SUBMISSION, True),
    *_rows("RCIG", {1: (79.8, 1.1), 10: (88.5, 0.2), 50: (90.2, 0.2)}, LEARNED, "RCIG paper, Table 1", False),
]


def find(method: str, ipc: int, protocol: str) -> Published | None:
    """The published row of `method` at `ipc` under `protocol` (dc, dsa), if any."""
    return next((p for p in PUBLISHED if (p.method, p.ipc, p.protocol) == (method, ipc, protocol)), None)


CORESETS = ("random", "herding")  # run here too: their published rows stand in the calibration file, gaps explained


def render(ipcs: list[int]) -> list[str]:
    """Markdown lines: the published methods' rows at these IPCs, each with its protocol and source."""
    lines = ["Published rows, not run here (hard labels unless the protocol says otherwise; dc / dsa = the same "
             "recipe as ours of that name; (unverified) = quoted from memory or later papers, not read in the "
             "source; the published random and herding rows stand beside ours, with the gaps explained, in "
             "calibration-fashion-mnist.md):", "",
             "| method | IPC | protocol | accuracy | source |", "|---|---|---|---|---|"]
    shown = (p for p in PUBLISHED if p.ipc in ipcs and p.method not in CORESETS)
    for p in sorted(shown, key=lambda p: (p.ipc, p.protocol not in ("dc", "dsa"), p.protocol, -p.mean)):
        acc = f"{p.mean:.1f}" + (f" +- {p.std:.1f}" if p.std is not None else "")
        lines.append(f"| {p.method} | {p.ipc} | {p.protocol} | {acc} | {p.source}"
                     f"{'' if p.verified else ' (unverified)'} |")
    return lines + [""]
