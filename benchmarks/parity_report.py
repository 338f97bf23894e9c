"""The parity benchmarks' table: print it, and write it with its title and command when asked."""
from __future__ import annotations


def report(columns: list[str], rows: list[list[str]], *, title: str, command: str, out: str | None) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    table = "\n".join(lines)
    print(table)
    if out:
        with open(out, "w") as f:
            f.write(f"# {title}\n\n`{command}`\n\n{table}\n")
    return table
