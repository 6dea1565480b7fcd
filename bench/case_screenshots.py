"""The screenshots of the shipped regression cases, drawn by the screenshot corpus.

prompts/cases/<template>.yaml name their screenshots by file. The files are corpus samples
(bench/screenshot_corpus.py), so every string in them, and every card number to be kept out of
an answer, is known; they are committed beside the cases so that a run needs neither the
corpus's fonts nor its drawing time. This writes exactly the samples the case files name, and
removes the corpus screenshots that no case names any more, so the folder never drifts from the
cases or from what the corpus draws.

    python -m bench.case_screenshots            # prompts/cases/screenshots/
    python -m bench.case_screenshots OUT_DIR    # the same files elsewhere
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable
from pathlib import Path

import yaml

from . import screenshot_corpus as corpus

CASES = Path(__file__).resolve().parents[1] / "prompts" / "cases"
SCREENSHOTS = CASES / "screenshots"


def used_files(cases_dir: Path = CASES) -> list[str]:
    """Every screenshot file the case files name, sorted."""
    names: set[str] = set()
    for path in sorted(cases_dir.glob("*.yaml")):
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        for case in data.get("cases") or []:
            names.update(case.get("screenshots") or [])
    return sorted(names)


def corpus_files() -> set[str]:
    """The file names of the corpus's samples, from the committed truth (nothing drawn)."""
    return {row["file"] for row in json.loads(corpus.TRUTH.read_text(encoding="utf-8"))}


def export(out_dir: Path, files: Iterable[str]) -> list[Path]:
    """Draws each named sample and saves it under its name, as small as its format allows without
    changing a pixel. ValueError names the files that are no corpus sample."""
    files = list(files)
    unknown = sorted(set(files) - corpus_files())
    if unknown:
        raise ValueError(f"not screenshot corpus samples: {', '.join(unknown)} "
                         f"(the samples are listed in {corpus.TRUTH.name})")
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name in files:
        path = out_dir / name
        corpus.save(corpus.sample(Path(name).stem), path, optimize=True)
        written.append(path)
    return written


def remove_unused(out_dir: Path, files: Iterable[str]) -> list[Path]:
    """Deletes the corpus screenshots in `out_dir` that are not in `files` (nothing else)."""
    unused = sorted(out_dir / name for name in corpus_files() - set(files) if (out_dir / name).is_file())
    for path in unused:
        path.unlink()
    return unused


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.case_screenshots", description=__doc__.split("\n")[0])
    parser.add_argument("out_dir", nargs="?", type=Path, default=SCREENSHOTS,
                        help="where to write them (default: prompts/cases/screenshots)")
    args = parser.parse_args(argv)
    files = used_files()
    try:
        written = export(args.out_dir, files)
    except ValueError as exc:
        print(exc, file=sys.stderr)
        return 1
    removed = remove_unused(args.out_dir, files)
    print(f"{len(written)} case screenshots written to {args.out_dir}"
          + (f"; removed, no case uses them: {', '.join(p.name for p in removed)}" if removed else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
