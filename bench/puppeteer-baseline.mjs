// Baseline for `just bench browser`: puppeteer-core driving the same Chromium, a fresh
// incognito context per screenshot (what an isolated task costs without a queue).
// Usage: node puppeteer-baseline.mjs URL REQUESTS CONCURRENCY... ; prints one JSON line.
import puppeteer from 'puppeteer-core';

const [url, requestsText, ...levels] = process.argv.slice(2);
const requests = Number(requestsText);
const browser = await puppeteer.launch({
  executablePath: process.env.CHROME_PATH || '/usr/bin/chromium',
  headless: true,
  args: ['--no-sandbox', '--disable-gpu', '--disable-background-networking',
         '--disable-component-update', '--no-first-run', '--disable-sync'],
});

async function shot() {
  const started = performance.now();
  const context = await browser.createBrowserContext();
  const page = await context.newPage();
  await page.setViewport({ width: 1280, height: 800 });
  await page.goto(url, { waitUntil: 'load' });
  await page.screenshot({ type: 'png' });
  await context.close();
  return performance.now() - started;
}

const results = {};
for (const level of levels.map(Number)) {
  for (let index = 0; index < 3; index++) await shot();
  const latencies = [];
  let next = 0;
  const started = performance.now();
  await Promise.all(Array.from({ length: level }, async () => {
    while (next < requests) {
      next += 1;
      latencies.push(await shot());
    }
  }));
  const seconds = (performance.now() - started) / 1000;
  latencies.sort((a, b) => a - b);
  const at = (q) => latencies[Math.min(latencies.length - 1, Math.floor(q * latencies.length))];
  results[level] = { p50_ms: at(0.5), p95_ms: at(0.95), per_second: requests / seconds };
}
await browser.close();
console.log(JSON.stringify(results));
