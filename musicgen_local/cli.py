"""`musicgen-local`: predict, train, serve (Replicate v1 API), cog-serve (Cog's own server), schema, weights."""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

from . import cli_loop, logs
from .cli_common import add_inputs, follow, print_field_errors
from .errors import MusicgenError
from .registry import FETCHABLE_VERSIONS, LM_VERSIONS, PRESETS
from .settings import ENV_VARS, Settings

ROOT = Path(__file__).resolve().parents[1]


def cmd_predict(args, settings: Settings) -> int:
    from pydantic import ValidationError

    from .engine import Request, load_engine
    from .schema import parse_cli_pairs, parse_input

    try:
        pairs = parse_cli_pairs(args.input)
        weights = _deployed(settings, args.deployment, args.weights) if args.deployment else args.weights
        tuned_weights = _tuned(weights, pairs)
        inp = parse_input(pairs)
    except ValidationError as exc:
        print_field_errors(exc)
        return 2
    request = replace(Request.from_input(inp), weights=tuned_weights)
    out = Path(args.output or f"out.{request.output_format}")
    with tempfile.TemporaryDirectory(prefix="musicgen-") as scratch:  # downloads; nothing is left behind
        engine = load_engine(settings.with_(warmup="none", data_dir=Path(scratch)))  # load only the model it names
        growing = _growing_file(out, request) if args.stream else None
        try:
            result = follow(engine.submit(request, stream=args.stream), out, growing)
        except BaseException:
            if growing is not None:  # no half file is left behind
                growing.discard()
            raise
        finally:
            engine.close()
    print(
        f"{out} ({result.num_samples / result.sample_rate:.2f} s, {result.channels} ch, "
        f"{result.sample_rate} Hz) seed={result.seed}"
    )
    return 0


def _tuned(weights: str | None, pairs: dict) -> str | None:
    """--weights: a fine-tune's tar (or folder); the model_version defaults to its base, and must be it."""
    if weights is None:
        return None
    from . import tuned
    from .errors import UserError

    found = tuned.read(weights)
    asked = pairs.setdefault("model_version", found.base)
    if asked != found.base:
        raise UserError(
            f"{weights} is a fine-tune of `{found.base}`; it cannot decode `{asked}` (leave "
            "model_version out, or set it to that)."
        )
    return str(Path(weights).resolve())


def _deployed(settings: Settings, name: str, weights: str | None) -> str | None:
    """--deployment owner/name: the fine-tune its current version decodes with (None: a published version), read
    from the server's data folder (MUSICGEN_DATA), where deployments are kept."""
    from .database import Database
    from .deployments import Deployments
    from .errors import UserError
    from .registry import Registry

    if weights is not None:
        raise UserError("Give --deployment or --weights, not both: a deployment names its own weights.")
    path = Path(settings.data_dir) / "musicgen.sqlite3"
    if not path.is_file():
        raise UserError(f"No server data in {settings.data_dir} (MUSICGEN_DATA): deployments are kept there.")
    db = Database(path)
    try:
        deployment = Deployments(db).get(name)
        if deployment is None:
            have = ", ".join(d.full_name for d in Deployments(db).all()) or "none"
            raise UserError(f"No deployment {name!r} in {path}; it has {have}.")
        version = Registry(db).version(deployment.release.version)
    finally:
        db.close()
    if version is None:
        raise UserError(f"The deployment {name} runs version {deployment.release.version}, which is gone.")
    print(f"{name}: {version.model}:{version.id} (release {deployment.release.number})", file=sys.stderr)
    return version.weights


def _growing_file(out: Path, request):
    """--stream: the wav that grows as segments arrive (musicgen_local/growing_wav.py); `out` itself,
    or beside it when the output is an mp3."""
    from .growing_wav import GrowingWav

    return GrowingWav(out if request.output_format == "wav" else out.with_name(out.name + ".partial.wav"))


def cmd_train(args, settings: Settings) -> int:
    """Fine-tune here, with a progress bar; the same trainer as the trainings API and Cog's train.py."""
    from pydantic import ValidationError
    from tqdm import tqdm

    from .engine.api import Log, Progress
    from .engine.train_here import train_here
    from .training.params import parse_training_cli_pairs

    out = Path(args.output).resolve()
    bar = tqdm(unit="update", desc="training", leave=False, delay=0.5)

    def show(event) -> None:
        if isinstance(event, Progress):
            bar.total, bar.n = event.total, event.done
            if event.loss is not None:
                bar.set_postfix(loss=f"{event.loss:.4f}", refresh=False)
            bar.refresh()
        elif isinstance(event, Log) and not event.line.startswith("step "):  # the bar shows the steps
            tqdm.write(event.line, file=sys.stderr)

    try:
        inputs = parse_training_cli_pairs(args.input)
        weights = train_here(settings, inputs, out, show, work_dir=Path(args.work_dir) if args.work_dir else None)
    except ValidationError as exc:
        print_field_errors(exc)
        return 2
    finally:
        bar.close()
    print(
        f"{weights} ({weights.stat().st_size / 2**20:.1f} MiB): use it with `musicgen-local predict --weights "
        f"{weights.name}`, COG_WEIGHTS, or serve it (see docs/fine-tuning.md)"
    )
    return 0


def cmd_serve(args, settings: Settings) -> int:
    from .server import serve

    return serve(settings, args.host, args.port)


def cmd_mcp(args, settings: Settings) -> int:
    from .mcp_server import run

    run(
        args.url,
        args.token if args.token is not None else settings.api_token or None,
        args.transport,
        args.host,
        args.port,
        tuple(args.allowed_host),
    )
    return 0


def write_cog_schema(looper: bool = False) -> Path:
    """The schema coglet reads from .cog/openapi_schema.json to validate inputs (`cog build` writes it; the
    Dockerfile and `cog-serve` write it here). Left alone when current, so a read-only tree (the image's) serves."""
    from .looper import schema as looper_schema
    from .schema import openapi_schema
    from .training.params import training_openapi_schema

    schema = looper_schema.openapi_schema() if looper else openapi_schema()
    schema["components"]["schemas"].update(training_openapi_schema())  # as `cog build` writes it with `train:`
    path, text = ROOT / ".cog" / "openapi_schema.json", json.dumps(schema, indent=1)
    if not path.is_file() or path.read_text() != text:
        path.parent.mkdir(exist_ok=True)
        path.write_text(text)
    return path


def cmd_cog_serve(args, settings: Settings) -> int:
    """Cog's own HTTP server (coglet) on predict.py, outside Docker, with our schema so that coglet
    validates inputs."""
    write_cog_schema(args.looper)
    env = dict(
        os.environ,
        COG_PREDICT_TYPE_STUB="predict_looper.py:Predictor" if args.looper else "predict.py:Predictor",
        COG_TRAIN_TYPE_STUB="train.py:train",
        PORT=str(args.port),
        # coglet's prediction slots: as many as the engine batches (predict.py's @concurrent max)
        COG_MAX_CONCURRENCY=os.environ.get("COG_MAX_CONCURRENCY", str(settings.max_batch)),
        # coglet starts its worker as `python` from PATH: it must be this interpreter.
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    )
    os.chdir(ROOT)
    mode = ["--x-mode", "train"] if args.train else []  # coglet serves /trainings in its train mode
    if args.train:
        env["COG_MAX_CONCURRENCY"] = "1"  # one training at a time: train() is a plain function
    os.execvpe(sys.executable, [sys.executable, "-m", "cog.server.http", "--host", args.host, *mode], env)


def cmd_schema(args, settings: Settings) -> int:
    from .schema import openapi_schema, reference_json

    print(json.dumps(openapi_schema() if args.openapi else reference_json(), indent=2))
    return 0


def cmd_weights_tiny(args, settings: Settings) -> int:
    from .testing.tiny import write_tiny_weights

    path = write_tiny_weights(Path(args.dir))
    print(f"tiny checkpoints written to {path}; use them with MUSICGEN_WEIGHTS={path}")
    return 0


def cmd_weights_list(args, settings: Settings) -> int:
    from . import weights as W

    rows = W.listing(settings.weights_dir)
    print(f"weights in {settings.weights_dir}")
    for group in dict.fromkeys(r[0] for r in rows):
        mine = [r for r in rows if r[0] == group]
        absent = sum(size is None for _, _, size in mine)
        total = sum(size or 0 for _, _, size in mine)
        print(f"{group:<20} {'complete' if not absent else f'{absent} missing':<10} {W.size_text(total):>9}")
        for _, file, size in mine:
            print(f"  {'present' if size is not None else 'missing':<8} {W.size_text(size) if size else '':>9}  {file}")
    return 0


def cmd_weights_fetch(args, settings: Settings) -> int:
    import logging

    from . import weights as W

    logging.getLogger("httpx2").setLevel(logging.WARNING)  # one INFO line per HEAD/GET drowns the progress
    say = logging.getLogger("musicgen_local.weights").info
    unknown = [v for v in args.model_versions if v not in FETCHABLE_VERSIONS]
    if unknown:
        print(
            f"error: unknown model_version {', '.join(unknown)}; choose from {', '.join(FETCHABLE_VERSIONS)}",
            file=sys.stderr,
        )
        return 2
    versions = list(args.model_versions)
    versions += [v for v in FETCHABLE_VERSIONS if PRESETS[v].lm] if args.all else []
    versions += [v for v in LM_VERSIONS if PRESETS[v].melody] if args.melody else []
    versions = list(dict.fromkeys(versions or ["stereo-melody-large"]))  # the schema's default model_version
    summary = W.fetch(settings.weights_dir, W.files_for(versions, args.mbd, settings.checkpoints), log=say)
    say(
        f"{len(summary.downloaded)} file(s) downloaded ({W.size_text(summary.bytes_downloaded)}), "
        f"{len(summary.verified)} already present and verified, in {settings.weights_dir}"
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    env_help = "\n".join(
        f"  {name:24} {meaning} (default: {default!r})" for name, (default, meaning) in ENV_VARS.items()
    )
    parser = argparse.ArgumentParser(
        prog="musicgen-local",
        description=__doc__,
        epilog="environment:\n" + env_help,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("predict", help="run one prediction, like `cog predict`")
    add_inputs(p, "an input of the meta/musicgen schema (input_audio=@file.wav for a file)")
    p.add_argument("-o", "--output", help="where to write the audio (default: out.wav / out.mp3)")
    p.add_argument(
        "--stream",
        action="store_true",
        help="write the output as it is generated: a wav that grows segment by segment (not yet "
        "normalised), replaced by the final file at the end",
    )
    p.add_argument(
        "--weights",
        metavar="TAR",
        help="a fine-tune (what `musicgen-local train -o` or a training's output.weights gives) to "
        "decode with; model_version defaults to the one it was tuned from",
    )
    p.add_argument(
        "--deployment",
        metavar="OWNER/NAME",
        help="run what a deployment of the server in MUSICGEN_DATA runs now (its version, a fine-tune's weights "
        "too), here in this process",
    )
    p.set_defaults(func=cmd_predict)

    cli_loop.add_parser(sub)

    p = sub.add_parser("train", help="fine-tune on your own music (LoRA by default), writing a weights tar")
    add_inputs(p, "a training input (dataset_path=@songs.zip for a file); see docs/fine-tuning.md")
    p.add_argument("-o", "--output", default="weights.tar", help="where to write the fine-tune (default: weights.tar)")
    p.add_argument(
        "--work-dir",
        help="keep the training's work here (pieces, checkpoints): run the same command "
        "again to resume an interrupted training",
    )
    p.set_defaults(func=cmd_train)

    for name, func, text in (
        ("serve", cmd_serve, "the Replicate v1 API"),
        ("cog-serve", cmd_cog_serve, "Cog's own HTTP server on predict.py"),
    ):
        p = sub.add_parser(name, help=f"serve {text}")
        p.add_argument("--host", default="127.0.0.1")
        p.add_argument("--port", type=int, default=5000)
        if name == "cog-serve":
            p.add_argument("--train", action="store_true", help="serve Cog's /trainings on train.py instead")
            p.add_argument(
                "--looper", action="store_true", help="andreasjansson/musicgen-looper's predictor (predict_looper.py)"
            )
        p.set_defaults(func=func)

    p = sub.add_parser("mcp", help="an MCP server for agents (Claude Desktop, IDEs), a client of a v1 API")
    p.add_argument("--url", default="http://127.0.0.1:5000", help="the v1 API's base URL (default: this machine's)")
    p.add_argument("--token", help="its bearer token (default: MUSICGEN_API_TOKEN)")
    p.add_argument(
        "--transport",
        choices=("stdio", "streamable-http"),
        default="stdio",
        help="stdio (an MCP host starts this command) or streamable-http (at http://HOST:PORT/mcp)",
    )
    p.add_argument(
        "--host",
        default="127.0.0.1",
        help="with streamable-http: the address to bind (loopback by default; another one needs a token)",
    )
    p.add_argument("--port", type=int, default=8765, help="with streamable-http")
    p.add_argument(
        "--allowed-host",
        action="append",
        default=[],
        metavar="NAME",
        help="with streamable-http: a name clients reach it by, accepted in Host and Origin besides loopback's "
        "and the bound address (repeatable)",
    )
    p.set_defaults(func=cmd_mcp)

    p = sub.add_parser("schema", help="print the input schema")
    p.add_argument("--openapi", action="store_true", help="Cog's OpenAPI layout instead of the flat one")
    p.set_defaults(func=cmd_schema)

    weights = sub.add_parser("weights", help="manage checkpoints under MUSICGEN_WEIGHTS").add_subparsers(
        dest="weights_command", required=True
    )
    p = weights.add_parser("tiny", help="write tiny random checkpoints in the real layout (for tests)")
    p.add_argument("dir")
    p.set_defaults(func=cmd_weights_tiny)
    p = weights.add_parser("fetch", help="download weights from the Hugging Face hub (HF_TOKEN, HF_ENDPOINT)")
    p.add_argument(
        "model_versions",
        nargs="*",
        metavar="MODEL_VERSION",
        help=f"any of {', '.join(FETCHABLE_VERSIONS)} (default: stereo-melody-large; `medium` is the looper's)",
    )
    p.add_argument("--all", action="store_true", help="every MusicGen model_version (the looper's `medium` too)")
    p.add_argument("--melody", action="store_true", help="the two melody model_versions (and htdemucs)")
    p.add_argument("--mbd", action="store_true", help="also multi-band diffusion (multi_band_diffusion=true)")
    p.set_defaults(func=cmd_weights_fetch)
    p = weights.add_parser("list", help="show which weights are present, missing, and their sizes")
    p.set_defaults(func=cmd_weights_list)
    return parser


def main(argv: list[str] | None = None) -> int:
    logs.configure()
    args = build_parser().parse_args(argv)
    try:
        settings = Settings.from_env()
        logs.configure(settings.log_format)
        return args.func(args, settings) or 0
    except MusicgenError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
