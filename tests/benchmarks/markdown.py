"""Read back the markdown the benchmark report prints."""

from typing import Dict, List


def tables(text: str) -> Dict[str, List[List[str]]]:
    """Title (after ``### ``) -> the table's lines as lists of cells, header first."""
    out = {}
    for block in text.split("### ")[1:]:
        title, _, body = block.partition("\n")
        lines = [line for line in body.splitlines() if line.startswith("|") and "---" not in line]
        out[title] = [[c.strip() for c in line.strip("|").split("|")] for line in lines]
    return out
