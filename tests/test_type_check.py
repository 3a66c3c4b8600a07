"""mypy, run for real: the package type-checks under the project's configuration (pyproject.toml's
`[tool.mypy]`: every function annotated), and a user's code written against the SDK's clients sees
openai's own types on them, as docs/client.md says, including the error for an SDK option passed to
`create`."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
USER_CODE = '''
import asyncio

import openai
from openai.types.chat import ChatCompletionMessageParam
from pydantic import BaseModel

import blackbox_sdk
from blackbox_sdk import AsyncOpenAI, OpenAI, wrap
from blackbox_sdk.limits import RateLimits

MESSAGES: list[ChatCompletionMessageParam] = [{"role": "user", "content": "hi"}]


class Answer(BaseModel):
    text: str


client = OpenAI(base_url="http://127.0.0.1:9/v1", api_key="k")
reveal_type(client.chat.completions.create(model="m", messages=MESSAGES))  # chat
reveal_type(client.chat.completions.create(model="m", messages=MESSAGES, stream=True))  # stream
reveal_type(client.chat.completions.parse(model="m", messages=MESSAGES, response_format=Answer))  # parse
reveal_type(client.completions.create(model="m", prompt="hi"))  # completions
reveal_type(client.embeddings.create(model="m", input="hi"))  # embeddings
reveal_type(client.responses.create(model="m", input="hi"))  # responses
reveal_type(client.chat.completions.with_raw_response.create(model="m", messages=MESSAGES))  # raw
reveal_type(client.with_options(timeout=5))  # copy
reveal_type(wrap(openai.AsyncOpenAI(api_key="k")))  # wrap
reveal_type(blackbox_sdk.chat.completions.create(model="m", messages=MESSAGES))  # module


async def main() -> None:
    aclient = AsyncOpenAI(base_url="http://127.0.0.1:9/v1", api_key="k")
    reveal_type(await aclient.chat.completions.create(model="m", messages=MESSAGES))  # async


client.chat.completions.create(model="m", messages=MESSAGES, cache="off")  # option
RateLimits(tpm=100_000, default_max_output_tokens=None)  # uncapped, as docs/rate-limits.md allows
client.chat.completions.create(model="m", messages=MESSAGES, temperature="hot")  # wrong type
asyncio.run(main())
'''
REVEALED = {
    "chat": "openai.types.chat.chat_completion.ChatCompletion",
    "stream": "openai._streaming.Stream[openai.types.chat.chat_completion_chunk.ChatCompletionChunk]",
    "parse": "openai.types.chat.parsed_chat_completion.ParsedChatCompletion[user_code.Answer]",
    "completions": "openai.types.completion.Completion",
    "embeddings": "openai.types.create_embedding_response.CreateEmbeddingResponse",
    "responses": "openai.types.responses.response.Response",
    "raw": "openai._legacy_response.LegacyAPIResponse[openai.types.chat.chat_completion.ChatCompletion]",
    "copy": "blackbox_sdk._client.OpenAI",
    "wrap": "blackbox_sdk._client.AsyncOpenAI",
    "module": "openai.types.chat.chat_completion.ChatCompletion",
    "async": "openai.types.chat.chat_completion.ChatCompletion",
}


def tag(line: str) -> str:
    """The comment that names a line of USER_CODE (mypy counts lines from 1)."""
    return USER_CODE.splitlines()[int(line) - 1].rsplit("# ", 1)[1]


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One mypy cache for the module's runs: the second reads openai's and the package's analysis from the first."""
    return tmp_path_factory.mktemp("mypy-cache")


def mypy_command(cache_dir: Path, *args: str) -> tuple[list[str], dict[str, str]]:
    """mypy on the interpreter running the tests (whose site-packages hold the extras), and its environment. The
    package is found on MYPYPATH: mypy does not follow the import hook of an editable install (`pip install -e`)."""
    command = [sys.executable, "-m", "mypy", "--cache-dir", str(cache_dir), "--config-file", str(ROOT / "pyproject.toml"), *args]
    return command, {**os.environ, "MYPYPATH": str(ROOT)}


def mypy(cache_dir: Path, *args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    """Run mypy to the end."""
    command, env = mypy_command(cache_dir, *args)
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


PYTHONS = {"running": None, "oldest-supported": "3.10"}


@pytest.fixture(scope="module")
def package_checks(cache_dir: Path) -> Iterator[dict[str, subprocess.Popen[str]]]:
    """The package's two checks, started together: mypy is one process on one core, and the two Python versions
    keep apart caches (a folder each under the cache dir), so neither waits for the other."""
    started = {}
    for name, python in PYTHONS.items():
        command, env = mypy_command(cache_dir, *([] if python is None else ["--python-version", python]))
        started[name] = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    yield started
    for process in started.values():
        process.kill()
        process.communicate()


def finished(process: subprocess.Popen[str]) -> tuple[int, str]:
    """A started check's exit status and its output, once it has finished."""
    stdout, stderr = process.communicate(timeout=600)
    return process.returncode, stdout + stderr


@pytest.mark.parametrize("python", list(PYTHONS))
def test_the_package_type_checks(package_checks: dict[str, subprocess.Popen[str]], python: str) -> None:
    """On this interpreter, and as the oldest Python the package supports (`requires-python`) would see it: a name
    its standard library lacks, or code only it reaches (a version check's other branch), fails here."""
    returncode, output = finished(package_checks[python])
    assert returncode == 0, output
    assert re.search(r"Success: no issues found in \d+ source files", output), output


def test_a_users_code_sees_openais_types_on_the_sdks_clients(
    package_checks: dict[str, subprocess.Popen[str]], cache_dir: Path, tmp_path: Path
) -> None:
    finished(package_checks["running"])  # its cache holds openai's and the package's analysis for this Python
    (tmp_path / "user_code.py").write_text(USER_CODE)
    result = mypy(cache_dir, "user_code.py", cwd=tmp_path)
    revealed = {tag(line): found for line, found in re.findall(r'^user_code\.py:(\d+): note: Revealed type is "(.+)"$', result.stdout, re.M)}
    assert revealed == REVEALED, result.stdout
    errors = {tag(line): code for line, code in re.findall(r"^user_code\.py:(\d+): error: .*\[([a-z-]+)\]$", result.stdout, re.M)}
    assert errors == {"option": "call-overload", "wrong type": "call-overload"}, result.stdout
    assert result.returncode == 1
