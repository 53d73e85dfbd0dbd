// Takes the screenshot of a trace in Jaeger's UI that docs/operations.md shows: opens the trace,
// expands the orderflow `process` span and its tags, and saves the page as a PNG.
//
// Usage: node deploy/local/trace_screenshot.js http://127.0.0.1:4319/trace/<trace id> out.png
//
// Needs Debian's chromium (/usr/bin/chromium), playwright-core from npm (`npm i playwright-core`
// in a scratch directory, then NODE_PATH=<it>/node_modules), and a Jaeger serving the real UI
// (JAEGER_UI_ASSETS, see deploy/local/jaeger.sh): the Go module's build has only a placeholder.
const { chromium } = require('playwright-core');

(async () => {
  const [url, out] = process.argv.slice(2);
  if (!url || !out) {
    console.error('usage: node trace_screenshot.js <trace URL> <out.png>');
    process.exit(2);
  }
  // Without the background-networking flags Chromium keeps calling Google's hosts, which this
  // machine's closed network refuses.
  const browser = await chromium.launch({
    executablePath: '/usr/bin/chromium',
    args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  });
  const page = await browser.newPage({ viewport: { width: 1500, height: 1000 } });
  await page.goto(url, { waitUntil: 'networkidle' });
  await page.getByText('process order-transition-requests').first().click();
  await page.waitForTimeout(800);
  await page.getByText('Tags:').first().click();
  await page.waitForTimeout(300);
  await page.screenshot({ path: out, fullPage: true });
  await browser.close();
})();
