"""Bad inputs of ``prepare`` / ``fetch`` and bad prepared datasets: one clear error, nothing lost.

Two tables. :data:`CLI_CASES` runs ``torchrec-me prepare`` / ``fetch`` (and ``train`` on a
damaged prepared dataset) in-process on tiny generated files: each row is (setup, argv,
exit code, fragment of the expected message). Every row checks the exit code and the
fragment, that nothing printed a traceback or ``Exception ignored``, that messages are
ASCII (no raw bytes of a binary input), and that every file that existed before is
still there (byte for byte when the command failed, and then nothing new either).
:data:`READER_CASES` damages a prepared dataset and expects one ``DatasetError`` naming
what is wrong from the reader alone: when it is built, or, for a corrupt data page, when
the row group is read.
"""

import fcntl
import gzip
import hashlib
import json
import os
import random
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Tuple

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.data.rawfiles import criteo_rows, write_criteo, write_lines
from torchrec_me.cli import main as cli_main
from torchrec_me.config import DataConfig
from torchrec_me.data.parquet import ParquetDataset
from torchrec_me.data.prepare import text
from torchrec_me.data.store import DatasetError

ROOT_SKIP = pytest.mark.skipif(os.geteuid() == 0, reason="root may write anywhere; os.access says so")


def _tree(root: Path) -> Dict[str, str]:
    """Every path under ``root``: a file's sha256, or ``dir``."""
    return {
        str(p.relative_to(root)): "dir" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
    }


# ---------------------------------------------------------------- inputs


def _criteo(tmp: Path, n: int = 200) -> None:
    write_criteo(tmp / "c.txt", criteo_rows(n))
    (tmp / "notes.md").write_text("my notes\n")


def _truncated_gz(tmp: Path) -> None:
    _criteo(tmp, 3000)
    packed = gzip.compress((tmp / "c.txt").read_bytes())
    (tmp / "c.txt.gz").write_bytes(packed[: len(packed) // 2])


def _binary(tmp: Path) -> None:
    (tmp / "bin.txt").write_bytes(random.Random(0).randbytes(5000).replace(b"\t", b" "))


def _binary_with_tabs(tmp: Path) -> None:
    rng = random.Random(1)
    garbage = [b"\t".join(rng.randbytes(6).replace(b"\n", b"") for _ in range(3)) for _ in range(200)]
    (tmp / "bin.txt").write_bytes(b"\n".join(garbage))


def _non_utf8_lines(bad: int) -> Callable[[Path], None]:
    def setup(tmp: Path) -> None:
        lines = (write_criteo(tmp / "c.txt", criteo_rows(200)).read_bytes()).split(b"\n")
        for k in range(bad):
            lines[5 + 10 * k] = lines[5 + 10 * k].replace(b"\t", b"\t\xff\xfe", 1)
        (tmp / "c.txt").write_bytes(b"\n".join(lines))

    return setup


def _grouplens_without_side_files(tmp: Path) -> None:
    (tmp / "ml").mkdir()
    write_lines(tmp / "ml" / "u.data", [f"{u}\t{i}\t{1 + (u * i) % 5}\t{880000000 + u * i}" for u in range(1, 20) for i in range(1, 20)])


def _recbole(tmp: Path, inter: bytes = b"") -> None:
    d = tmp / "ml"
    d.mkdir()
    rows = "".join(f"{u}\t{i}\t{1 + (u * i) % 5}\t{880000000 + u * i}\n" for u in range(1, 30) for i in range(1, 30))
    (d / "ml.inter").write_bytes(b"user_id:token\titem_id:token\trating:float\ttimestamp:float\n" + rows.encode() + inter)
    (d / "ml.user").write_text("user_id:token\tage:token\tgender:token\toccupation:token\tzip_code:token\n1\t20\tM\tx\t55105\n")


def _recbole_full(inter: bytes) -> Callable[[Path], None]:
    def setup(tmp: Path) -> None:
        _recbole(tmp, inter)
        (tmp / "ml" / "ml.item").write_text("item_id:token\tclass:token_seq\n1\tDrama\n")

    return setup


def _raw_dir(tmp: Path) -> None:
    _criteo(tmp)
    (tmp / "raw").mkdir()
    (tmp / "raw" / "ml-100k.inter").write_text("user_id:token\n")
    (tmp / "raw" / "a.txt").write_text("mine\n")


def _prepared(extra: bool) -> Callable[[Path], None]:
    def setup(tmp: Path) -> None:
        _criteo(tmp)
        argv = ["prepare", "criteo", "--input", str(tmp / "c.txt"), "--output", str(tmp / "ds"), "--no-progress"]
        assert cli_main(argv + ["--min-count", "2"]) == 0
        if extra:
            (tmp / "ds" / "notes.md").write_text("keep me\n")

    return setup


def _leftovers(tmp: Path) -> None:
    _criteo(tmp)
    for name in (".o.incomplete-abc123", ".o.incompletely", ".other.incomplete-x"):
        (tmp / name).mkdir()
        (tmp / name / "train.parquet").write_bytes(b"half")


def _read_only(tmp: Path) -> None:
    _criteo(tmp)
    (tmp / "ro").mkdir()
    (tmp / "ro").chmod(0o555)


# ---------------------------------------------------------------- damaged prepared datasets


def _truncate(ds: Path) -> None:
    f = ds / "train.parquet"
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])


def _corrupt_pages(ds: Path) -> None:
    f = ds / "val.parquet"
    data = bytearray(f.read_bytes())
    footer = int.from_bytes(data[-8:-4], "little") + 8
    for k in range(4, len(data) - footer, 7):  # every 7th byte of the data pages
        data[k] ^= 0x5A
    f.write_bytes(bytes(data))


def _edit_meta(edit: Callable[[dict], None]) -> Callable[[Path], None]:
    def damage(ds: Path) -> None:
        meta = json.loads((ds / "metadata.json").read_text())
        edit(meta)
        (ds / "metadata.json").write_text(json.dumps(meta))

    return damage


def _shrink_vocab(meta: dict) -> None:
    meta["sparse_features"][3]["vocab_size"] -= 1


def _drop_vocab_row(ds: Path) -> None:
    vocab = pq.read_table(ds / "vocab.parquet")
    pq.write_table(vocab.slice(1), ds / "vocab.parquet")


def _id_beyond_table(ds: Path) -> None:
    size = json.loads((ds / "metadata.json").read_text())["sparse_features"][0]["vocab_size"]
    t = pq.read_table(ds / "test.parquet")
    ids = t.column("I1").to_numpy().copy()
    ids[3] = size + 5
    pq.write_table(t.set_column(t.schema.get_field_index("I1"), "I1", pa.array(ids, pa.int32())), ds / "test.parquet")


def _swap_vocab(ds: Path) -> None:
    """Two tokens of I1 trade ids: the same sizes, other vocabularies."""
    t = pq.read_table(ds / "vocab.parquet").to_pylist()
    a, b = [k for k, r in enumerate(t) if r["field"] == "I1"][:2]
    t[a]["token"], t[b]["token"] = t[b]["token"], t[a]["token"]
    pq.write_table(pa.Table.from_pylist(t, pq.read_schema(ds / "vocab.parquet")), ds / "vocab.parquet")


def _empty_val(ds: Path) -> None:
    t = pq.read_table(ds / "val.parquet")
    pq.write_table(t.slice(0, 0), ds / "val.parquet")
    _edit_meta(lambda m: m["splits"]["val"].update(rows=0))(ds)


READER_CASES: Dict[str, Tuple[Callable[[Path], None], str]] = {
    "truncated-parquet": (_truncate, "cannot read {ds}/train.parquet (corrupt or truncated?)"),
    "corrupt-pages": (_corrupt_pages, "{ds}/val.parquet"),
    "missing-split-file": (lambda ds: (ds / "test.parquet").unlink(), "cannot read {ds}/test.parquet"),
    "truncated-metadata": (lambda ds: (ds / "metadata.json").write_text('{"format": "torch'), "metadata.json is not valid JSON"),
    "vocab-size-disagrees": (_edit_meta(_shrink_vocab), "tokens of feature 'I4' with ids 0.."),
    "vocab-row-missing": (_drop_vocab_row, "{ds}/vocab.parquet has"),
    "id-beyond-table": (_id_beyond_table, "feature 'I1' has ids up to"),
    "swapped-vocab": (_swap_vocab, "vocab.parquet of {ds} does not match the vocab_fingerprint"),
    "empty-val-split": (_empty_val, "the val split of {ds} is empty"),
}  # fmt: skip


@dataclass(frozen=True)
class Case:
    """One command line on a prepared tmp dir; ``{tmp}`` in ``argv`` is that dir."""

    setup: Callable[[Path], None]
    argv: Tuple[str, ...]
    code: int
    fragment: str
    removed: Tuple[str, ...] = ()  # pre-existing paths the command is meant to remove


def _prepare(dataset: str, inp: str, out: str, *flags: str) -> Tuple[str, ...]:
    return ("prepare", dataset, "--input", f"{{tmp}}/{inp}", "--output", f"{{tmp}}/{out}", "--no-progress", *flags)


CLI_CASES = {
    # --overwrite replaces only a prepared dataset (issue 12, item 1)
    "overwrite-dir-holding-input": Case(_criteo, _prepare("criteo", "c.txt", "", "--overwrite"), 1, "contains the input"),
    "overwrite-the-input": Case(_criteo, _prepare("criteo", "c.txt", "c.txt", "--overwrite"), 1, "c.txt is the input"),
    "overwrite-a-file": Case(_criteo, _prepare("criteo", "c.txt", "notes.md", "--overwrite"), 1, "notes.md already exists and --overwrite may not replace it: it is a file"),
    "existing-file": Case(_criteo, _prepare("criteo", "c.txt", "notes.md"), 1, "notes.md already exists and is not replaceable"),
    "overwrite-raw-dir": Case(_raw_dir, _prepare("criteo", "c.txt", "raw", "--overwrite"), 1, "raw already exists and --overwrite may not replace it: it is not a dataset written by"),
    "overwrite-dataset-with-notes": Case(_prepared(True), _prepare("criteo", "c.txt", "ds", "--overwrite"), 1, "it holds notes.md, which `torchrec-me prepare` did not write"),
    "overwrite-dataset": Case(_prepared(False), _prepare("criteo", "c.txt", "ds", "--overwrite", "--seed", "3"), 0, "prepared criteo ->"),
    "existing-dataset": Case(_prepared(False), _prepare("criteo", "c.txt", "ds"), 1, "ds already exists; pass --overwrite to replace it"),
    "overwrite-movielens-input": Case(_recbole_full(b""), _prepare("movielens", "ml", "ml", "--overwrite"), 1, "ml is the input"),
    "fetch-overwrite-raw-dir": Case(_raw_dir, ("fetch", "movielens-100k", "--output", "{tmp}/raw", "--overwrite"), 1, "it holds a.txt, which `torchrec-me fetch` would not rewrite"),
    "fetch-overwrite-a-file": Case(_criteo, ("fetch", "movielens-100k", "--output", "{tmp}/notes.md", "--overwrite"), 1, "notes.md already exists and --overwrite may not replace it"),
    # an interrupted run's leftovers (item 8)
    "leftovers-removed": Case(_leftovers, _prepare("criteo", "c.txt", "o"), 0, "removed an incomplete output of {tmp}/o left by an interrupted run: .o.incomplete-abc123",
                              removed=(".o.incomplete-abc123", ".o.incomplete-abc123/train.parquet")),
    # outputs and options checked before any work
    "negative-seed": Case(_criteo, _prepare("criteo", "c.txt", "o", "--seed", "-1"), 1, "--seed must be >= 0, got -1"),
    "zero-row-group-size": Case(_criteo, _prepare("criteo", "c.txt", "o", "--row-group-size", "0"), 1, "--row-group-size must be >= 1"),
    "output-under-a-file": Case(_criteo, _prepare("criteo", "c.txt", "notes.md/o"), 1, "cannot create output {tmp}/notes.md/o: {tmp}/notes.md is not a directory"),
    "fetch-output-under-a-file": Case(_criteo, ("fetch", "movielens-100k", "--output", "{tmp}/notes.md/ml"), 1, "{tmp}/notes.md is not a directory"),
    "read-only-output": pytest.param(Case(_read_only, _prepare("criteo", "c.txt", "ro/o"), 1, "cannot create output {tmp}/ro/o: {tmp}/ro is not writable"), marks=ROOT_SKIP),
    # inputs that gave a traceback
    "truncated-gz": Case(_truncated_gz, _prepare("criteo", "c.txt.gz", "o"), 1, "cannot read {tmp}/c.txt.gz: Truncated compressed stream"),
    "grouplens-without-side-files": Case(_grouplens_without_side_files, _prepare("movielens", "ml", "o"), 1, "lacks u.user, u.item"),
    "recbole-without-item-file": Case(_recbole, _prepare("movielens", "ml", "o"), 1, "lacks ml.item"),
    "binary-garbage": Case(_binary, _prepare("criteo", "bin.txt", "o"), 1, "does not look like Criteo data: its first line has no tab character ('"),
    "binary-garbage-with-tabs": Case(_binary_with_tabs, _prepare("criteo", "bin.txt", "o"), 1, "does not look like criteo data: 200 of the first 200 lines are malformed; 200 lines skipped: 200 not UTF-8 (e.g. line 1: '"),
    "binary-garbage-avazu": Case(_binary, _prepare("avazu", "bin.txt", "o"), 1, "is not avazu data: its first line is '"),
    # a line that is not UTF-8 is one malformed line (item 7)
    "one-non-utf8-line": Case(_non_utf8_lines(1), _prepare("criteo", "c.txt", "o"), 0, "1 not UTF-8; e.g. line 6: '"),
    "many-non-utf8-lines": Case(_non_utf8_lines(3), _prepare("criteo", "c.txt", "o"), 1, "3 of 200 lines (1.5%) are malformed"),
    "one-non-utf8-recbole-line": Case(_recbole_full(b"\xff\t1\t5\t881000000\n"), _prepare("movielens", "ml", "o"), 0, "1 not utf-8 in ml.inter; e.g. line 843: '\\xff"),
    # prepare warns of an empty split (item 6)
    "empty-val-split": Case(lambda tmp: _criteo(tmp, 9), _prepare("criteo", "c.txt", "o", "--min-count", "1"), 0, "warning: the val split is empty (9 rows kept in all)"),
}  # fmt: skip


def _damaged(damage: Callable[[Path], None]) -> Callable[[Path], None]:
    def setup(tmp: Path) -> None:
        _prepared(False)(tmp)
        damage(tmp / "ds")

    return setup


# a damaged prepared dataset stops `train` with one line (exit 2, as config errors) before any step
CLI_CASES.update({
    f"train-{name}": Case(_damaged(damage), ("train", "data.path={tmp}/ds", "train.steps=1"), 2, fragment.replace("{ds}", "{tmp}/ds"))
    for name, (damage, fragment) in READER_CASES.items()
    if name != "corrupt-pages"  # found only when its row group is decoded, after training
})  # fmt: skip


@pytest.mark.parametrize("case", CLI_CASES.values(), ids=CLI_CASES.keys())
def test_cli_bad_input(case: Case, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    case.setup(tmp_path)
    capsys.readouterr()
    before = _tree(tmp_path)
    try:
        code = cli_main([a.replace("{tmp}", str(tmp_path)) for a in case.argv])
    finally:
        for d in [tmp_path, *tmp_path.rglob("*")]:
            if d.is_dir() and not d.is_symlink():
                d.chmod(0o755)
    out, err = capsys.readouterr()
    for stream in (out, err):
        assert "Traceback" not in stream and "Exception ignored" not in stream, stream[-3000:]
    assert err.isascii(), err
    assert code == case.code, err
    assert case.fragment.replace("{tmp}", str(tmp_path)) in out + err, (out, err)
    after = _tree(tmp_path)
    lost = sorted(set(before) - set(after) - set(case.removed))
    assert not lost, f"files lost: {lost}"
    assert all(p not in after for p in case.removed)
    if code != 0:
        assert len(err.strip().splitlines()) == 1 and err.startswith("torchrec-me: error: "), err
        assert after == before, "a failed command changed the directory"


@pytest.mark.parametrize(
    "argv",
    [
        pytest.param(_prepare("criteo", "c.txt", "o", "--seed", "-1"), id="negative-seed"),
        pytest.param(_prepare("criteo", "c.txt", "notes.md/o"), id="output-under-a-file"),
        pytest.param(_prepare("criteo", "c.txt", "", "--overwrite"), id="output-holds-input"),
        pytest.param(_prepare("criteo", "c.txt", "ro/o"), id="read-only-output", marks=ROOT_SKIP),
    ],
)  # fmt: skip
def test_outputs_are_checked_before_the_input_is_read(
    argv: Tuple[str, ...], tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    _read_only(tmp_path)

    def no_pass(*args: object, **kwargs: object) -> None:
        raise AssertionError("the input was read before the output was checked")

    monkeypatch.setattr(text, "scan_text", no_pass)
    try:
        assert cli_main([a.replace("{tmp}", str(tmp_path)) for a in argv]) == 1
    finally:
        (tmp_path / "ro").chmod(0o755)
    assert capsys.readouterr().err.startswith("torchrec-me: error: ")


def test_a_live_incomplete_directory_is_kept(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    _criteo(tmp_path)
    live = tmp_path / ".o.incomplete-live"
    live.mkdir()
    fd = os.open(live, os.O_RDONLY | os.O_DIRECTORY)
    fcntl.flock(fd, fcntl.LOCK_EX)  # as a concurrent prepare holds its own
    try:
        assert cli_main([a.replace("{tmp}", str(tmp_path)) for a in _prepare("criteo", "c.txt", "o")]) == 0
    finally:
        os.close(fd)
    assert live.is_dir() and "removed" not in capsys.readouterr().err


# ---------------------------------------------------------------- the reader alone


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("prepared")
    _prepared(False)(tmp)
    return tmp / "ds"


@pytest.mark.parametrize("damage,fragment", READER_CASES.values(), ids=READER_CASES.keys())
def test_bad_prepared_dataset(damage: Callable[[Path], None], fragment: str, prepared: Path, tmp_path: Path) -> None:
    ds = tmp_path / "ds"
    shutil.copytree(prepared, ds)
    damage(ds)
    before = _tree(tmp_path)
    with pytest.raises(DatasetError) as raised:
        data = ParquetDataset(DataConfig(name="parquet", path=str(ds)))
        for split in ("val", "test"):  # a corrupt data page is found when it is decoded
            list(data.eval_batches(split, 0, 1, 64))
        list(data.train_batches(0, 1, 64, 0, 4))
    message = str(raised.value)
    assert fragment.replace("{ds}", str(ds)) in message and len(message.splitlines()) == 1, message
    assert _tree(tmp_path) == before


def test_undamaged_dataset_reads(prepared: Path) -> None:
    """The control of the table above: the same reads succeed on the dataset as prepared."""
    data = ParquetDataset(DataConfig(name="parquet", path=str(prepared)))
    assert sum(int(b.labels.numel()) for b, _, _ in data.eval_batches("val", 0, 1, 64)) == 20
    assert len(list(data.train_batches(0, 1, 64, 0, 4))) == 4
