"""Reads the aligned text tables sbx prints (columns two spaces apart, aligned on the header)."""


def parse_table(text, columns):
    """Rows of a table whose header is exactly `columns` (in order), as dicts. Asserts that the
    header is the first line and that every cell starts at its header's column."""
    lines = [line for line in text.splitlines() if line.strip()]
    assert lines, f"no table in {text!r}"
    header = lines[0]
    starts = []
    position = 0
    for name in columns:
        index = header.find(name, position)
        assert index >= 0, f"column {name!r} missing from header {header!r}"
        starts.append(index)
        position = index + len(name)
    assert header.split() == " ".join(columns).split(), f"unexpected header {header!r}"
    assert starts[0] == 0, f"header {header!r} does not start at column 0"
    rows = []
    for line in lines[1:]:
        cells = {}
        for i, name in enumerate(columns):
            end = starts[i + 1] if i + 1 < len(columns) else None
            if i > 0:
                assert line[starts[i] - 2:starts[i]] == "  " or len(line) <= starts[i], (
                    f"column {name!r} not aligned in {line!r} (header {header!r})")
            cells[name] = line[starts[i]:end].strip()
        rows.append(cells)
    return rows
