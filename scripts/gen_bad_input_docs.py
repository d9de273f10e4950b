"""Write docs/bad-inputs.md: every case of the bad-input corpus, run, with the exact message.

    python scripts/gen_bad_input_docs.py            # from the repository root

The cases are those of tests/test_bad_inputs.py; each runs as the test runs it (in this
process, in a fresh temporary folder), so the table shows what a user sees today.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from test_bad_inputs import CASES, error_line, run_case

HEAD = """\
# Bad inputs and what they get

Every row is a case of the bad-input corpus (`tests/test_bad_inputs.py`), run through the real
command. A bad input ends with exit code 2 and one line on stderr that names the input and the
problem, never a traceback; the awkward-but-valid inputs (exit 0) must simply work. `<tmp>` is
the folder the case wrote its files to. Regenerate with `python scripts/gen_bad_input_docs.py`.

| case | input | command | what happens | message |
|---|---|---|---|---|
"""


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def row(case) -> str:
    with tempfile.TemporaryDirectory() as tmp:
        outcome = run_case(case, Path(tmp))
        message = error_line(outcome, Path(tmp))
    happens = "works (exit 0)" if outcome.code == 0 else f"refused (exit {outcome.code})"
    shown = f"`{_cell(message)}`" if outcome.code else ""
    return f"| `{case.name}` | {_cell(case.input)} | `{case.argv[0]}` | {happens} | {shown} |\n"


def main() -> None:
    text = HEAD + "".join(row(case) for case in CASES)
    out = ROOT / "docs" / "bad-inputs.md"
    out.parent.mkdir(exist_ok=True)
    out.write_text(text)
    print(f"wrote {out} ({len(CASES)} cases)")


if __name__ == "__main__":
    main()
