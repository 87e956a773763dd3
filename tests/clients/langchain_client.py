"""Asks the service one question through LangChain's `ChatOpenAI`, as a user would.

    .clients/venv/bin/python tests/clients/langchain_client.py invoke|stream \\
        http://127.0.0.1:8080/v1 "如何退货?"

Prints one JSON line: the answer's text, the message's `response_metadata` (with
`include_response_headers=True` it holds the HTTP headers: `x-qa-source` is how a
LangChain user sees where the answer came from, since LangChain drops body fields it does
not know, such as `resilient_qa`), that header on its own, `usage_metadata`, and, when
streamed, the number of chunks. What the server did not send is null. Any exception ends
the script with its traceback on stderr and exit status 1.
"""

import json
import sys

from langchain_openai import ChatOpenAI


def main():
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    mode, base_url, question = sys.argv[1:]
    llm = ChatOpenAI(
        base_url=base_url,
        api_key="any-key",
        model="resilient-qa",
        include_response_headers=True,
        # The client's own retries would hide a failed answer from the service: none here.
        max_retries=0,
        timeout=30,
    )
    if mode == "invoke":
        message, chunks = llm.invoke(question), None
    elif mode == "stream":
        message, chunks = None, 0
        for chunk in llm.stream(question):
            message = chunk if message is None else message + chunk
            chunks += 1
    else:
        sys.exit(f"unknown mode {mode!r}: expected invoke or stream")
    headers = message.response_metadata.get("headers") or {}
    print(
        json.dumps(
            {
                "text": message.content,
                "x_qa_source": headers.get("x-qa-source"),
                "x_request_id": headers.get("x-request-id"),
                "response_metadata": message.response_metadata,
                "usage_metadata": message.usage_metadata,
                "chunks": chunks,
            },
            ensure_ascii=False,
            default=str,
        )
    )


if __name__ == "__main__":
    main()
