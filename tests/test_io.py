"""Tests for hardgen.core.io.fit_square: the one transform from a real image to the generator's resolution."""

from __future__ import annotations

import numpy as np
import pytest

from hardgen.core.io import fit_square


def test_fit_square_keeps_the_aspect_ratio_and_centres_the_crop():
    h, w = 60, 120  # 1:2 -> short side 30, width 60, centre 30 columns
    image = np.zeros((h, w, 3), dtype=np.uint8)
    image[:, 40:80] = 255  # a centred vertical band, 1/3 of the width
    out = fit_square(image, 30)
    assert out.shape == (30, 30, 3) and out.dtype == np.uint8
    # the band is 20 px wide after scaling by 1/2 and covers columns 5..25 of the crop: not stretched
    band = out[15, :, 0] > 127
    assert band.sum() == 20 and band[5:25].all()


def test_fit_square_downsamples_with_area_averaging():
    checker = (np.indices((64, 64)).sum(axis=0) % 2 * 255).astype(np.uint8)
    out = fit_square(np.repeat(checker[..., None], 3, axis=2), 32)
    # area interpolation averages each 2x2 block: flat mid-grey, no aliasing
    assert np.abs(out.astype(int) - 128).max() <= 1


def test_fit_square_masks_stay_binary_and_aligned_with_their_image():
    rng = np.random.default_rng(0)
    mask = np.zeros((50, 80), dtype=bool)
    mask[10:30, 50:70] = True
    image = np.where(mask[..., None], 255, 0).astype(np.uint8).repeat(3, axis=2)
    image = np.clip(image.astype(int) + rng.integers(-3, 4, image.shape), 0, 255).astype(np.uint8)
    out_mask, out_image = fit_square(mask, 40, is_mask=True), fit_square(image, 40)
    assert out_mask.dtype == bool and out_mask.shape == (40, 40)
    assert (out_image[out_mask, 0] > 127).mean() > 0.95 and (out_image[~out_mask, 0] < 128).mean() > 0.95
    assert fit_square(np.ones((8, 8), bool), 32, is_mask=True).all()  # upsampling too
    with pytest.raises(ValueError, match="size"):
        fit_square(mask, 0)


def test_atomic_folder_replaces_a_tree_whole_or_not_at_all(tmp_path):
    import pytest

    from hardgen.core.io import atomic_folder

    root = tmp_path / "tree"
    root.mkdir()
    (root / "old.txt").write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_folder(root) as staging:
            (staging / "new.txt").write_text("half")
            raise RuntimeError("interrupted")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tree"]  # no staging folder left behind
    assert [p.name for p in root.iterdir()] == ["old.txt"]
    with atomic_folder(root) as staging:
        (staging / "new.txt").write_text("new")
    assert [p.name for p in root.iterdir()] == ["new.txt"]


def test_folder_digests_key_every_file_by_its_relative_path(tmp_path):
    from hardgen.core.io import file_digest, folder_digests

    (tmp_path / "unet").mkdir()
    (tmp_path / "unet" / "w.bin").write_bytes(b"weights")
    (tmp_path / "README.md").write_text("card")
    digests = folder_digests(tmp_path)
    assert digests == {"README.md": file_digest(tmp_path / "README.md"), "unet/w.bin": file_digest(tmp_path / "unet" / "w.bin")}
    assert folder_digests(tmp_path, skip_names=("README.md",)) == {"unet/w.bin": digests["unet/w.bin"]}
    (tmp_path / "unet" / "w.bin").write_bytes(b"other")
    assert folder_digests(tmp_path)["unet/w.bin"] != digests["unet/w.bin"]


def test_read_csv_table_errors_name_the_file_what_and_the_missing_columns(tmp_path):
    import pandas as pd

    from hardgen.core.io import DataError, read_csv_table, require_columns, table_or_csv

    path = tmp_path / "scores.csv"
    with pytest.raises(DataError, match=r"scores\.csv: score table not found"):
        read_csv_table(path, ("sample_id",), "score table")
    path.write_text("")
    with pytest.raises(DataError, match=r"scores\.csv: unreadable score table"):
        read_csv_table(path, ("sample_id",), "score table")
    path.write_text("sample_id,distance\n007,1.5\n")
    lacks = r"scores\.csv: score table lacks columns \['variant'\] \(has \['sample_id', 'distance'\]\)"
    with pytest.raises(DataError, match=lacks):
        read_csv_table(path, ("sample_id", "variant"), "score table")
    table = read_csv_table(path, ("sample_id",), "score table")
    assert table["sample_id"].tolist() == ["007"] and table["distance"].tolist() == [1.5]  # ids stay strings
    (tmp_path / "plan.csv").write_text("id,source_id,condition_id,sample_id,k\n007,010,1,2,3\n")
    assert read_csv_table(tmp_path / "plan.csv", (), "plan").iloc[0].tolist() == ["007", "010", "1", "2", 3]
    assert read_csv_table(tmp_path / "plan.csv", (), "plan", dtype={"id": int})["id"].tolist() == [7]  # as asked
    (tmp_path / "times.tsv").write_text("s\tmax_rss\n2.5\t10\n")
    assert read_csv_table(tmp_path / "times.tsv", ("s", "max_rss"), "benchmark file", sep="\t")["s"].tolist() == [2.5]
    # a table in memory: the same check, named by what it is; table_or_csv reads a path through read_csv_table
    with pytest.raises(DataError, match=r"^plan lacks columns \['seed'\]"):
        require_columns(pd.DataFrame({"sample_id": ["a"]}), ("sample_id", "seed"), "plan")
    name, read = table_or_csv(path, "score table", required_columns=("distance",))
    assert name == str(path) and read["distance"].tolist() == [1.5]
    with pytest.raises(DataError, match=r"^score table lacks columns \['z'\]"):
        table_or_csv(read, "score table", required_columns=("z",))


def test_read_csv_table_reads_every_column_as_given_strings_when_asked(tmp_path):
    from hardgen.core.io import DataError, read_csv_table

    path = tmp_path / "pairs.csv"
    path.write_text("image,split,n\nNA.png,,007\n")
    table = read_csv_table(path, ("image", "split"), "dataset table", dtype=str, keep_default_na=False)
    assert table.iloc[0].tolist() == ["NA.png", "", "007"]  # names, empty cells and leading zeros as written
    default = read_csv_table(path, ("image",), "dataset table")
    assert default["split"].isna().all() and default["n"].tolist() == [7]
    with pytest.raises(DataError, match=r"pairs\.csv: unreadable dataset table"):  # a value its dtype does not fit
        read_csv_table(path, (), "dataset table", dtype={"image": int})

def test_read_json_record_errors_name_the_file_what_and_the_missing_keys(tmp_path):
    from hardgen.core.io import DataError, read_json_record

    path = tmp_path / "run.json"
    with pytest.raises(DataError, match=r"run\.json: run record not found"):
        read_json_record(path, (), "run record")
    path.write_text("{")
    with pytest.raises(DataError, match=r"run\.json: unreadable run record"):
        read_json_record(path, (), "run record")
    path.write_text("[1, 2]")
    with pytest.raises(DataError, match=r"run\.json: run record is not a JSON object"):
        read_json_record(path, (), "run record")
    path.write_text('{"policy": "hard"}')
    with pytest.raises(DataError, match=r"run\.json: run record lacks \['ratio'\]"):
        read_json_record(path, ("policy", "ratio"), "run record")
    assert read_json_record(path, ("policy",), "run record") == {"policy": "hard"}
