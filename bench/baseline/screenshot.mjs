// The baseline `just bench browser` measures the service against: what a careful user
// writes by hand with puppeteer-core. One warm browser; every screenshot in a fresh
// incognito context (isolated cookies, storage and cache, like the service's tasks),
// closed afterwards.
//
//   node screenshot.mjs --url URL [--chrome /usr/bin/chromium] [--concurrency 1,4,8]
//                       [--count 40] [--warmup 5] [--profile DIR]
//
// Prints one JSON object per concurrency level on stdout:
//   {"concurrency":4,"count":40,"p50_ms":..,"p95_ms":..,"per_second":..,"failures":0}

import puppeteer from 'puppeteer-core';

function option(name, fallback) {
  const index = process.argv.indexOf(`--${name}`);
  return index >= 0 && index + 1 < process.argv.length ? process.argv[index + 1] : fallback;
}

const url = option('url');
if (!url) {
  console.error('screenshot.mjs: --url is required');
  process.exit(2);
}
const chrome = option('chrome', '/usr/bin/chromium');
const levels = option('concurrency', '1,4,8').split(',').map(Number);
const count = Number(option('count', '40'));
const warmup = Number(option('warmup', '5'));
const profile = option('profile', undefined);

// The flags the service's pool uses too, so both run the same Chromium the same way.
const browser = await puppeteer.launch({
  executablePath: chrome,
  headless: true,
  userDataDir: profile,
  args: [
    '--no-sandbox',
    '--disable-gpu',
    '--disable-background-networking',
    '--disable-component-update',
    '--no-first-run',
    '--disable-sync',
  ],
});

async function screenshot() {
  const context = await browser.createBrowserContext();
  try {
    const page = await context.newPage();
    await page.setViewport({ width: 1280, height: 800 });
    await page.goto(url, { waitUntil: 'load' });
    const image = await page.screenshot({ type: 'png' });
    if (image.length < 100) throw new Error('empty screenshot');
  } finally {
    await context.close();
  }
}

function percentile(sorted, fraction) {
  const index = Math.min(sorted.length - 1, Math.ceil(fraction * sorted.length) - 1);
  return sorted[Math.max(0, index)];
}

try {
  for (let index = 0; index < warmup; index += 1) await screenshot();
  for (const concurrency of levels) {
    const latencies = [];
    let failures = 0;
    let next = 0;
    const started = performance.now();
    async function lane() {
      while (next < count) {
        next += 1;
        const begun = performance.now();
        try {
          await screenshot();
          latencies.push(performance.now() - begun);
        } catch (error) {
          failures += 1;
          console.error(`screenshot failed: ${error.message}`);
        }
      }
    }
    await Promise.all(Array.from({ length: concurrency }, lane));
    const elapsed = (performance.now() - started) / 1000;
    latencies.sort((left, right) => left - right);
    console.log(JSON.stringify({
      concurrency,
      count,
      p50_ms: percentile(latencies, 0.5),
      p95_ms: percentile(latencies, 0.95),
      per_second: latencies.length / elapsed,
      failures,
    }));
  }
} finally {
  await browser.close();
}
