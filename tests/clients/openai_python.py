"""Asks the service one question through the official `openai` Python SDK, as a user would.

    .clients/venv/bin/python tests/clients/openai_python.py sync|async|stream \\
        http://127.0.0.1:8080/v1 "如何退货?"

Prints one JSON line: the answer's text, the service's `resilient_qa` object, the
`X-QA-Source` and `X-Request-Id` headers, `usage`, the model, the finish reason and, when
streamed, the number of chunks. What the server did not send is null. Any exception ends
the script with its traceback on stderr and exit status 1.
"""

import asyncio
import json
import sys

import openai

# The client's own retries would hide a failed answer from the service: none here.
CLIENT_OPTIONS = {"api_key": "any-key", "max_retries": 0, "timeout": 30.0}


def extra(obj, name):
    """A field the SDK's types do not declare (the service's `resilient_qa`), or None."""
    return (getattr(obj, "model_extra", None) or {}).get(name)


def report(raw, completion):
    choice = completion.choices[0]
    return {
        "text": choice.message.content,
        "resilient_qa": extra(completion, "resilient_qa"),
        "x_qa_source": raw.headers.get("x-qa-source"),
        "x_request_id": raw.headers.get("x-request-id"),
        "model": completion.model,
        "usage": completion.usage.model_dump() if completion.usage else None,
        "chunks": None,
        "finish_reason": choice.finish_reason,
    }


def ask_sync(base_url, question):
    client = openai.OpenAI(base_url=base_url, **CLIENT_OPTIONS)
    raw = client.chat.completions.with_raw_response.create(
        model="resilient-qa", messages=[{"role": "user", "content": question}]
    )
    return report(raw, raw.parse())


async def ask_async(base_url, question):
    client = openai.AsyncOpenAI(base_url=base_url, **CLIENT_OPTIONS)
    raw = await client.chat.completions.with_raw_response.create(
        model="resilient-qa", messages=[{"role": "user", "content": question}]
    )
    return report(raw, raw.parse())


def ask_stream(base_url, question):
    client = openai.OpenAI(base_url=base_url, **CLIENT_OPTIONS)
    raw = client.chat.completions.with_raw_response.create(
        model="resilient-qa",
        messages=[{"role": "user", "content": question}],
        stream=True,
        stream_options={"include_usage": True},
    )
    out = {
        "text": "",
        "resilient_qa": None,
        "x_qa_source": raw.headers.get("x-qa-source"),
        "x_request_id": raw.headers.get("x-request-id"),
        "model": None,
        "usage": None,
        "chunks": 0,
        "finish_reason": None,
    }
    for chunk in raw.parse():
        out["chunks"] += 1
        out["model"] = chunk.model or out["model"]
        out["resilient_qa"] = extra(chunk, "resilient_qa") or out["resilient_qa"]
        if chunk.usage:
            out["usage"] = chunk.usage.model_dump()
        for choice in chunk.choices:
            out["text"] += choice.delta.content or ""
            out["finish_reason"] = choice.finish_reason or out["finish_reason"]
    return out


def main():
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    mode, base_url, question = sys.argv[1:]
    if mode == "sync":
        out = ask_sync(base_url, question)
    elif mode == "async":
        out = asyncio.run(ask_async(base_url, question))
    elif mode == "stream":
        out = ask_stream(base_url, question)
    else:
        sys.exit(f"unknown mode {mode!r}: expected sync, async or stream")
    print(json.dumps(out, ensure_ascii=False))


if __name__ == "__main__":
    main()
