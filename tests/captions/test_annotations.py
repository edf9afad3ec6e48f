import csv
import json
import random
import string
from pathlib import Path

import pytest

from fcvc_pipeline.captions.annotations import MAX_CAPTION_CHARS, detect_format, load_annotations, read_text
from fcvc_pipeline.captions.splits import msvd_standard_split, normalize_split, read_split_file
from fcvc_pipeline.errors import ConfigError, InputError

MSVD_HEADER = ["VideoID", "Start", "End", "WorkerID", "Source", "AnnotationTime", "Language", "Description"]


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def msrvtt(path: Path, videos, sentences) -> Path:
    return write(path, json.dumps({"info": {}, "videos": videos, "sentences": sentences}, indent=1))


def youtube_ids(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    alphabet = string.ascii_letters + string.digits + "-_"
    out: set[str] = set()
    while len(out) < n:
        out.add("".join(rng.choice(alphabet) for _ in range(11)))
    return sorted(out)


def msvd_csv(path: Path, clips: list[tuple[str, int, int]], *, english=2, other=1, no_english=()) -> Path:
    rows = []
    for vid, start, end in clips:
        clip = f"{vid}_{start}_{end}"
        for k in range(0 if clip in no_english else english):
            rows.append([vid, start, end, 1, "clean", 10, "English", f"A person does thing {k}, ok."])
        for k in range(other):
            rows.append([vid, start, end, 2, "unverified", 11, "German", f"Eine Person {k}"])
    random.Random(1).shuffle(rows)
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(MSVD_HEADER)
        w.writerows(rows)
    return path


# -- formats -------------------------------------------------------------------------------------

def test_msrvtt_json(tmp_path):
    p = msrvtt(tmp_path / "videodatainfo.json",
               [{"video_id": "video0", "split": "train"}, {"video_id": "video1", "split": "validate"},
                {"video_id": "video2", "split": "test"}],
               [{"video_id": "video0", "caption": "a man runs", "sen_id": 0},
                {"video_id": "video0", "caption": "A man is running.", "sen_id": 1},
                {"video_id": "video1", "caption": "a cat", "sen_id": 2},
                {"video_id": "video2", "caption": "a dog", "sen_id": 3}])
    ann = load_annotations(p)
    assert ann.format == "msrvtt-json" and ann.split_source == "file"
    assert ann.splits == {"video0": "train", "video1": "val", "video2": "test"}
    assert [c.caption for c in ann.captions] == ["a man runs", "A man is running.", "a cat", "a dog"]
    assert ann.captions[1].where == "sentences[1]"


def test_coco_json_names_videos_by_file_name(tmp_path):
    p = write(tmp_path / "coco.json", json.dumps({
        "images": [{"id": 1, "file_name": "clips/vid_a.mp4", "split": "train"},
                   {"id": 2, "file_name": "vid_b.avi", "split": "val"},
                   {"id": 3, "split": "test"}],
        "annotations": [{"image_id": 1, "caption": "first"}, {"image_id": 2, "caption": "second"},
                        {"image_id": 3, "caption": "third"}, {"image_id": 1, "caption": "again"}]}))
    ann = load_annotations(p)
    assert ann.format == "coco-json"
    assert ann.splits == {"vid_a": "train", "vid_b": "val", "3": "test"}
    assert [(c.video_id, c.caption) for c in ann.captions] == [
        ("vid_a", "first"), ("vid_b", "second"), ("3", "third"), ("vid_a", "again")]


def test_csv_with_header_and_split_column(tmp_path):
    p = write(tmp_path / "caps.csv", 'video_id,caption,split\nv1,"a man, running",train\nv2,a cat,test\n'
                                     'v3,a dog,validate\n')
    ann = load_annotations(p)
    assert ann.format == "csv"
    assert ann.splits == {"v1": "train", "v2": "test", "v3": "val"}
    assert ann.captions[0].caption == "a man, running"


def test_headerless_csv_and_tsv(tmp_path):
    ann = load_annotations(write(tmp_path / "a.csv", "v1,a man runs,train\nv2,a cat sits,test\n"))
    assert ann.splits == {"v1": "train", "v2": "test"}
    ann = load_annotations(write(tmp_path / "b.tsv", "video\tsentence\tsplit\nv1\ta, b\ttrain\n"))
    assert ann.captions[0].caption == "a, b"


def test_jsonl(tmp_path):
    p = write(tmp_path / "caps.jsonl", '{"video_id": "v1", "caption": "x y", "split": "train"}\n\n'
                                       '{"video_id": 7, "caption": "z", "split": "test"}\n')
    ann = load_annotations(p)
    assert ann.format == "jsonl"
    assert ann.splits == {"v1": "train", "7": "test"}
    # a single-line JSONL file parses as one JSON object and is still recognised
    assert load_annotations(write(tmp_path / "one.jsonl", '{"video_id": "v", "caption": "c", "split": "train"}'
                                  )).format == "jsonl"


def test_explicit_format_overrides_detection(tmp_path):
    p = write(tmp_path / "x.txt", "v1,a man,train\n")
    assert load_annotations(p, "csv").format == "csv"
    with pytest.raises(InputError, match="missing top-level 'videos'"):
        load_annotations(write(tmp_path / "c.json", '{"annotations": []}'), "msrvtt-json")


def test_auto_detection_says_what_it_tried(tmp_path):
    with pytest.raises(InputError) as e:
        load_annotations(write(tmp_path / "x.json", '{"foo": [], "bar": 1}'))
    msg = str(e.value)
    assert "msrvtt-json" in msg and "coco-json" in msg and "jsonl" in msg and "x.json" in msg
    with pytest.raises(InputError) as e:
        load_annotations(write(tmp_path / "x.csv", "a,b,c,d\n1,2,3,4\n"))
    assert "msvd-csv" in str(e.value) and "csv" in str(e.value)
    fmt, _ = detect_format(tmp_path / "m.csv", ",".join(MSVD_HEADER) + "\n")
    assert fmt == "msvd-csv"


# -- split rules ---------------------------------------------------------------------------------

def test_split_names():
    assert [normalize_split(s) for s in ("train", "VALIDATE", "val", "dev", "test", "restval", "x", 3)] == [
        "train", "val", "val", "val", "test", "train", None, None]


def test_msvd_standard_split_on_1970_clips(tmp_path):
    ids = youtube_ids(1970)
    clips = [(vid, i % 50, i % 50 + 7) for i, vid in enumerate(ids)]
    names = [f"{v}_{s}_{e}" for v, s, e in clips]
    no_english = {names[5], names[1500]}
    p = msvd_csv(tmp_path / "video_corpus.csv", clips, no_english=no_english)
    ann = load_annotations(p)
    assert ann.format == "msvd-csv" and ann.split_source == "msvd-standard"
    order = sorted(names)  # code-point (ASCII) order, '-' before digits before upper before '_' before lower
    expected = {n: "train" for n in order[:1200]} | {n: "val" for n in order[1200:1300]} | {
        n: "test" for n in order[1300:]}
    got = dict(ann.splits)
    assert all(got[n] == expected[n] for n in got)
    assert sum(1 for s in got.values() if s == "train") == 1200 - sum(1 for n in no_english if expected[n] == "train")
    # clips with no English caption are reported, not fatal, and keep their place in the order
    assert sorted(ann.videos_without_captions) == sorted(no_english)
    assert not (set(got) & no_english)
    assert ann.counts["non_english_captions"] == 1970
    assert len(ann.captions) == 2 * 1968
    assert all(c.caption.startswith("A person") for c in ann.captions)


def test_msvd_rule_directly():
    names = [f"c{i:04d}" for i in range(1970)]
    split = msvd_standard_split(reversed(names))
    assert split["c0000"] == "train" and split["c1199"] == "train" and split["c1200"] == "val"
    assert split["c1299"] == "val" and split["c1300"] == "test" and split["c1969"] == "test"
    with pytest.raises(ValueError):
        msvd_standard_split(names[:10])


def test_msvd_subset_needs_a_split_file(tmp_path):
    clips = [("abc", 1, 5), ("abd", 2, 9), ("xyz", 0, 3)]
    p = msvd_csv(tmp_path / "small.csv", clips)
    with pytest.raises(ConfigError, match="--split-file"):
        load_annotations(p)
    sf = write(tmp_path / "splits.txt", "# clip split\nabc_1_5 train\nabd_2_9,test\nxyz_0_3\tval\n")
    ann = load_annotations(p, split_file=sf)
    assert ann.splits == {"abc_1_5": "train", "abd_2_9": "test", "xyz_0_3": "val"}
    assert ann.split_source == "split-file"


def test_msvd_clip_folder_gives_the_standard_split(tmp_path):
    ids = youtube_ids(1975, seed=3)
    clips = [(v, 1, 4) for v in ids]
    p = msvd_csv(tmp_path / "corpus.csv", clips, english=1, other=0)
    with pytest.raises(ConfigError, match="1975 clips"):
        load_annotations(p)
    folder = tmp_path / "YouTubeClips"
    folder.mkdir()
    for v in ids[:1970]:
        (folder / f"{v}_1_4.avi").touch()
    (folder / "notes.txt").touch()
    ann = load_annotations(p, split_file=folder)
    assert ann.split_source == "split-file+msvd-standard"
    assert len(ann.splits) == 1970
    assert sorted(ann.unsplit_videos) == sorted(f"{v}_1_4" for v in ids[1970:])
    listing = write(tmp_path / "clips.txt", "\n".join(f"{v}_1_4" for v in ids[:1970]) + "\n")
    assert load_annotations(p, split_file=listing).splits == ann.splits


def test_clip_list_is_refused_for_other_formats(tmp_path):
    p = write(tmp_path / "a.csv", "video_id,caption\nv1,a\n")
    with pytest.raises(ConfigError, match="clip list"):
        load_annotations(p, split_file=write(tmp_path / "l.txt", "v1\n"))


def test_start_end_written_as_floats(tmp_path):
    p = tmp_path / "c.csv"
    p.write_text(",".join(MSVD_HEADER) + "\nabc,5.0,10.00,1,clean,1,English,a dog\n", encoding="utf-8")
    ann = load_annotations(p, split_file=write(tmp_path / "s.txt", "abc_5_10 test\n"))
    assert ann.splits == {"abc_5_10": "test"}


def test_split_file_overrides_the_file_and_drops_unlisted(tmp_path):
    p = write(tmp_path / "a.jsonl", '{"video_id": "a", "caption": "x", "split": "train"}\n'
                                    '{"video_id": "b", "caption": "y", "split": "train"}\n')
    sf = write(tmp_path / "s.json", json.dumps({"test": ["a"], "train": ["zz"]}))
    ann = load_annotations(p, split_file=sf)
    assert ann.splits == {"a": "test"}
    assert ann.unsplit_videos == ["b"] and ann.videos_without_captions == ["zz"]
    ann = load_annotations(p, split_file=write(tmp_path / "m.json", json.dumps({"a": "validate", "b": "test"})))
    assert ann.splits == {"a": "val", "b": "test"}


def test_split_file_errors_name_the_line(tmp_path):
    with pytest.raises(InputError, match=r"s1.txt:3: .*one kind per file"):
        read_split_file(write(tmp_path / "s1.txt", "a train\nb test\nc\n"))
    with pytest.raises(InputError, match=r"s2.txt:2: unknown split 'holdout'"):
        read_split_file(write(tmp_path / "s2.txt", "a train\nb holdout\n"))
    with pytest.raises(InputError, match=r"s3.txt:2: video 'a' is given two splits"):
        read_split_file(write(tmp_path / "s3.txt", "a train\na test\n"))
    with pytest.raises(InputError, match="empty"):
        read_split_file(write(tmp_path / "s4.txt", "# nothing\n\n"))
    with pytest.raises(InputError, match="no video files"):
        (tmp_path / "empty").mkdir()
        read_split_file(tmp_path / "empty")


def test_no_split_information_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="no split") as e:
        load_annotations(write(tmp_path / "a.jsonl", '{"video_id": "a", "caption": "x"}\n'))
    assert "--split-file" in str(e.value)


def test_videos_without_split_are_dropped_and_reported(tmp_path):
    p = msrvtt(tmp_path / "v.json", [{"video_id": "a", "split": "train"}, {"video_id": "lonely", "split": "test"}],
               [{"video_id": "a", "caption": "x"}, {"video_id": "ghost", "caption": "y"}])
    ann = load_annotations(p)
    assert ann.splits == {"a": "train"}
    assert ann.unsplit_videos == ["ghost"] and ann.videos_without_captions == ["lonely"]


# -- bad input -----------------------------------------------------------------------------------

def test_malformed_json_names_line_and_column(tmp_path):
    p = write(tmp_path / "bad.json", '{\n  "videos": [],\n  "sentences": [\n    {"video_id": "a",, }\n  ]\n}\n')
    with pytest.raises(InputError) as e:
        load_annotations(p)
    assert e.value.line == 4 and "bad.json:4" in str(e.value) and "column" in str(e.value)
    with pytest.raises(InputError, match="bad.json:4"):
        load_annotations(p, "msrvtt-json")


def test_malformed_jsonl_names_the_line(tmp_path):
    p = write(tmp_path / "bad.jsonl", '{"video_id": "a", "caption": "x", "split": "train"}\n'
                                      '{"video_id": "b", "caption": "y", "split": "train"}\n{"video_id": \n')
    with pytest.raises(InputError) as e:
        load_annotations(p)
    assert e.value.line == 3 and "invalid JSON" in str(e.value)
    with pytest.raises(InputError, match="bad2.jsonl:2: each object needs"):
        load_annotations(write(tmp_path / "bad2.jsonl", '{"video_id": "a", "caption": "x", "split": "train"}\n'
                                                        '{"video": "b"}\n'))


def test_malformed_csv_names_the_line(tmp_path):
    with pytest.raises(InputError) as e:
        load_annotations(write(tmp_path / "q.csv", 'video_id,caption,split\nv1,ok,train\nv2,"never closed,train\n'))
    assert e.value.line is not None and e.value.line >= 3 and "malformed CSV" in str(e.value)
    with pytest.raises(InputError, match=r"w.csv:3: expected 3 fields, found 4"):
        load_annotations(write(tmp_path / "w.csv", "video_id,caption,split\nv1,ok,train\nv2,a,b,train\n"))
    with pytest.raises(InputError, match=r"m.csv:2: expected 8 fields"):
        load_annotations(write(tmp_path / "m.csv", ",".join(MSVD_HEADER) + "\nabc,1,2,English,oops\n"))
    with pytest.raises(InputError, match=r"u.csv:2: unknown split 'later'"):
        load_annotations(write(tmp_path / "u.csv", "video_id,caption,split\nv1,ok,later\n"))


def test_non_utf8_is_a_clear_error(tmp_path):
    p = tmp_path / "latin.csv"
    p.write_bytes("video_id,caption,split\nv1,caf\u00e9,train\n".encode("latin-1"))
    with pytest.raises(InputError) as e:
        load_annotations(p)
    assert "not UTF-8" in str(e.value) and e.value.line == 2 and "iconv" in str(e.value)
    bom = tmp_path / "bom.csv"
    bom.write_bytes(b"\xef\xbb\xbfvideo_id,caption,split\nv1,x,train\n")
    assert read_text(bom).startswith("video_id")
    assert load_annotations(bom).splits == {"v1": "train"}


def test_empty_and_missing_files(tmp_path):
    with pytest.raises(InputError, match="empty"):
        load_annotations(write(tmp_path / "e.json", "  \n"))
    with pytest.raises(InputError, match="no such file"):
        load_annotations(tmp_path / "nope.json")
    with pytest.raises(InputError, match="found a JSON list"):
        load_annotations(write(tmp_path / "l.json", "[1, 2]"))


def test_blank_captions_are_skipped_and_counted(tmp_path):
    p = msrvtt(tmp_path / "v.json", [{"video_id": "a", "split": "train"}, {"video_id": "b", "split": "test"}],
               [{"video_id": "a", "caption": "x"}, {"video_id": "a", "caption": "   "},
                {"video_id": "a", "caption": ""}, {"video_id": "b", "caption": "\t\n"}, {"video_id": "a", "caption": None}])
    ann = load_annotations(p)
    assert ann.counts["empty_captions"] == 4
    assert [c.caption for c in ann.captions] == ["x"]
    assert ann.videos_without_captions == ["b"]
    with pytest.raises(InputError, match=r"sentences\[0\]: caption must be text"):
        load_annotations(msrvtt(tmp_path / "n.json", [{"video_id": "a", "split": "train"}],
                                [{"video_id": "a", "caption": 5}]))


def test_everything_skipped_is_an_error(tmp_path):
    with pytest.raises(InputError, match="no usable captions"):
        load_annotations(write(tmp_path / "a.csv", "video_id,caption,split\nv1, ,train\n"))


def test_duplicate_video_entries_are_merged_or_refused(tmp_path):
    p = msrvtt(tmp_path / "d.json", [{"video_id": "a", "split": "train"}, {"video_id": "a", "split": "train"}],
               [{"video_id": "a", "caption": "x"}, {"video_id": "a", "caption": "x"}])
    ann = load_annotations(p)
    assert ann.counts["duplicate_video_entries"] == 1 and ann.splits == {"a": "train"}
    assert ann.counts["duplicate_captions"] == 1 and len(ann.captions) == 2  # identical references kept
    p = msrvtt(tmp_path / "c.json", [{"video_id": "a", "split": "train"}, {"video_id": "a", "split": "test"}],
               [{"video_id": "a", "caption": "x"}])
    with pytest.raises(InputError, match=r"listed as test at videos\[1\] but as train at videos\[0\]"):
        load_annotations(p)
    with pytest.raises(InputError, match=r"c.csv:3: video 'v1' is listed as test here but as train at line 2"):
        load_annotations(write(tmp_path / "c.csv", "video_id,caption,split\nv1,a,train\nv1,b,test\n"))


def test_very_long_captions(tmp_path):
    long_ok = " ".join(["word"] * 500)
    huge = "x" * (MAX_CAPTION_CHARS + 1)
    p = tmp_path / "l.csv"
    with open(p, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["video_id", "caption", "split"])
        w.writerows([["v1", long_ok, "train"], ["v1", huge, "train"], ["v2", "x" * 300_000, "test"],
                     ["v2", "short", "test"]])
    ann = load_annotations(p)  # 300k characters exceed csv's default field limit: still read, then skipped
    assert ann.counts["too_long_captions"] == 2
    assert [c.caption for c in ann.captions] == [long_ok, "short"]


def test_control_characters_in_ids_are_refused(tmp_path):
    with pytest.raises(InputError) as e:
        load_annotations(write(tmp_path / "c.jsonl", '{"video_id": "ok", "caption": "x", "split": "train"}\n'
                                                     '{"video_id": "a\\nb", "caption": "x", "split": "train"}\n'))
    assert e.value.line == 2 and "control character" in str(e.value) and "U+000A" in str(e.value)
    with pytest.raises(InputError, match=r"videos\[0\]: video id 'a\\x00b'"):
        load_annotations(msrvtt(tmp_path / "n.json", [{"video_id": "a\x00b", "split": "train"}], []))
    with pytest.raises(InputError, match="empty video id"):
        load_annotations(write(tmp_path / "e.csv", "video_id,caption,split\n  ,x,train\n"))


def test_path_like_ids_are_kept_as_keys_and_reported(tmp_path):
    p = write(tmp_path / "p.csv", "video_id,caption,split\n../../etc/passwd,x,train\nclips/a.mp4,y,test\n"
                                  " plain_id ,z,train\n")
    ann = load_annotations(p)
    assert set(ann.splits) == {"../../etc/passwd", "clips/a.mp4", "plain_id"}
    assert ann.unsafe_ids == ["../../etc/passwd", "clips/a.mp4"]


# -- errors that name the right cause ------------------------------------------------------------------------

def test_an_unknown_header_is_named_not_read_as_data(tmp_path):
    p = write(tmp_path / "h.csv", "name,text,foo\nvid1,a dog runs,x\nvid2,a cat sits,y\n")
    for fmt in ("auto", "csv"):
        with pytest.raises(InputError) as e:
            load_annotations(p, fmt)
        assert e.value.line == 1 and "line 1 reads as a header (columns: name, text, foo)" in e.value.reason
        assert "has no video id column" in e.value.reason and "unknown: name, foo" in e.value.reason
        assert "video_id (or videoid, video, vid, id)" in e.value.reason and "unknown split" not in str(e.value)
        assert "video_id,caption,split" in e.value.hint
    # no known name at all, but a first cell unlike the ids below it: still a header
    with pytest.raises(InputError, match="has no video id column and no caption column"):
        load_annotations(write(tmp_path / "h2.csv", "clip,words\nclip001,a dog runs\nclip002,a cat\n"))
    # header names are matched whatever their case, spaces or dashes
    ann = load_annotations(write(tmp_path / "k.csv", "Video ID,Sentence,Split\nv1,a dog,train\n"))
    assert ann.splits == {"v1": "train"} and ann.captions[0].caption == "a dog"


def test_data_in_the_first_row_stays_data(tmp_path):
    ann = load_annotations(write(tmp_path / "d.csv", "v1,running,train\nv2,a cat sits,test\n"))
    assert [c.caption for c in ann.captions] == ["running", "a cat sits"]  # 'train' is a split: data
    two = write(tmp_path / "two.csv", "v1,running\nv2,a cat sits\n")  # ids shaped like the first one: data
    ann = load_annotations(two, split_file=write(tmp_path / "s.txt", "v1 train\nv2 test\n"))
    assert [c.video_id for c in ann.captions] == ["v1", "v2"]


def test_a_json_array_of_jsonl_objects_is_read_as_jsonl(tmp_path):
    items = [{"video_id": "v1", "caption": "a dog", "split": "train"}, {"video_id": 2, "caption": "a cat", "split": "test"}]
    p = write(tmp_path / "a.json", json.dumps(items, indent=1))
    for fmt in ("auto", "jsonl"):
        ann = load_annotations(p, fmt)
        assert ann.format == "jsonl" and ann.splits == {"v1": "train", "2": "test"}
        assert [c.caption for c in ann.captions] == ["a dog", "a cat"]
    bad = write(tmp_path / "b.json", '[\n {"video_id": "v1", "caption": "x", "split": "train"},\n {"video": "v2"}\n]\n')
    with pytest.raises(InputError, match=r"b.json:3: each object needs 'video_id' and 'caption'"):
        load_annotations(bad, "jsonl")
    with pytest.raises(InputError, match=r"found a JSON list of objects with keys \['caption', 'split', 'video'"):
        load_annotations(bad)
    with pytest.raises(InputError, match=r"c.json:2: invalid JSON"):
        load_annotations(write(tmp_path / "c.json", '[{"video_id": "v1", "caption": "x"}\n {"video_id": "v2"}]'), "jsonl")


def _png(path: Path) -> Path:
    from PIL import Image

    Image.new("RGB", (4, 4), (200, 30, 30)).save(path)
    return path


@pytest.mark.parametrize("name, content, what", [
    ("frame.png", None, "a PNG image"),
    ("clip.mp4", b"\x00\x00\x00\x20ftypisom\x00\x00\x02\x00isomiso2avc1mp41\x00\x00\x00\x08free", "an MP4/MOV video"),
    ("clip.avi", b"RIFF\x24\x00\x00\x00AVI LIST\x00\x00\x00\x00", "an AVI video"),
    ("clip.mkv", b"\x1a\x45\xdf\xa3\x9f\x42\x86\x81\x01", "a Matroska/WebM video"),
    ("blob.bin", b"captions?\x00\x01\x02\xff\xfe\x00", "a binary file (it holds NUL bytes)"),
], ids=["png", "mp4", "avi", "mkv", "nul-bytes"])
def test_binary_files_are_named_for_what_they_are(tmp_path, name, content, what):
    p = _png(tmp_path / name) if content is None else tmp_path / name
    if content is not None:
        p.write_bytes(content)
    for fmt in ("auto", "csv", "jsonl"):
        with pytest.raises(InputError) as e:
            load_annotations(p, fmt)
        assert e.value.reason == f"this is {what}, not an annotation file"
        assert "iconv" not in str(e.value) and "`fcvc extract`" in e.value.hint


def test_utf16_text_is_told_to_convert(tmp_path):
    for encoding in ("utf-16", "utf-16-le"):  # with and without a byte-order mark
        p = tmp_path / f"{encoding}.csv"
        p.write_bytes("video_id,caption,split\nv1,a dog,train\n".encode(encoding))
        with pytest.raises(InputError) as e:
            load_annotations(p)
        assert "UTF-16" in e.value.reason and "must be UTF-8" in e.value.reason and "iconv -f utf-16" in e.value.hint
