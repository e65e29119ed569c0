from agents.indexing import chunk_id, chunk_words


def test_chunks_overlap_and_cover_every_word():
    words = [f"w{i}" for i in range(100)]
    chunks = chunk_words(" ".join(words), size=30, overlap=10)
    assert [c.split()[0] for c in chunks] == ["w0", "w20", "w40", "w60", "w80"]
    assert chunks[0].split()[-10:] == chunks[1].split()[:10]
    assert chunks[-1].split()[-1] == "w99"
    covered = {w for c in chunks for w in c.split()}
    assert covered == set(words)


def test_short_text_is_one_chunk_and_blank_is_none():
    assert chunk_words("just a few words", size=30, overlap=10) == ["just a few words"]
    assert chunk_words("   \n ", size=30, overlap=10) == []


def test_chunk_ids_are_stable_and_distinct():
    assert chunk_id("acme", "doc", 0) == chunk_id("acme", "doc", 0)
    assert len({chunk_id("acme", "doc", 0), chunk_id("acme", "doc", 1), chunk_id("beta", "doc", 0)}) == 3
