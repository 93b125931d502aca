import asyncio, sys, time
from openai import AsyncOpenAI
URL = sys.argv[1]; N = int(sys.argv[2]); R = int(sys.argv[3])
async def client(i):
    c = AsyncOpenAI(base_url=URL, api_key="x")
    toks = 0
    for r in range(R):
        s = await c.chat.completions.create(model="m", messages=[{"role": "user", "content": f"tell me about day {i} {r}"}], max_tokens=64, temperature=1.0, stream=True)
        async for ch in s:
            if ch.choices and ch.choices[0].delta.content: toks += 1
    return toks
async def main():
    t0 = time.perf_counter()
    n = sum(await asyncio.gather(*[client(i) for i in range(N)]))
    print(N, "clients", n, "chunks", round(n / (time.perf_counter() - t0), 1), "chunks/s")
asyncio.run(main())
