"""The seed's resilience benchmark (python-langchain-design.md, 9.1), pointed at the service.

    .clients/venv/bin/python tests/clients/langchain_bench.py http://127.0.0.1:8080/v1

100 questions `测试问题{i}`, at most 10 in flight, each through a LangChain chain
(prompt | ChatOpenAI) whose model is the service. Prints the seed's report lines, then one
JSON line: {"total", "success", "errors", "elapsed_s", "sources", "error_samples"}, where
`sources` counts the answers by their `X-QA-Source` header ("none" when it is absent).
The client does not retry, so every error counted is one the service let through.
"""

import asyncio
import json
import sys
import time
from collections import Counter
from typing import List

from langchain_core.prompts import ChatPromptTemplate
from langchain_openai import ChatOpenAI


async def benchmark_resilience(chain, questions: List[str], concurrency: int = 10):
    semaphore = asyncio.Semaphore(concurrency)

    async def ask(q):
        async with semaphore:
            return await chain.ainvoke({"question": q})

    start = time.time()
    results = await asyncio.gather(*(ask(q) for q in questions), return_exceptions=True)
    elapsed = time.time() - start

    errors = [r for r in results if isinstance(r, BaseException)]
    success_count = len(results) - len(errors)
    error_count = len(errors)

    print(f"总请求数:{len(questions)}")
    print(f"并发数:{concurrency}")
    print(f"总耗时:{elapsed:.2f}秒")
    print(f"吞吐量:{len(questions)/elapsed:.2f} req/s")
    print(f"成功率:{success_count/len(questions)*100:.1f}%")
    print(f"错误率:{error_count/len(questions)*100:.1f}%")

    sources = Counter(
        (r.response_metadata.get("headers") or {}).get("x-qa-source") or "none"
        for r in results
        if not isinstance(r, BaseException)
    )
    return {
        "total": len(questions),
        "success": success_count,
        "errors": error_count,
        "elapsed_s": round(elapsed, 3),
        "sources": dict(sources),
        "error_samples": [repr(e) for e in errors[:3]],
    }


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    llm = ChatOpenAI(
        base_url=sys.argv[1],
        api_key="any-key",
        model="resilient-qa",
        include_response_headers=True,
        max_retries=0,
        timeout=30,
    )
    chain = ChatPromptTemplate.from_messages([("user", "{question}")]) | llm
    questions = [f"测试问题{i}" for i in range(100)]
    report = asyncio.run(benchmark_resilience(chain, questions, concurrency=10))
    print(json.dumps(report, ensure_ascii=False))


if __name__ == "__main__":
    main()
