// How every browser test launches Debian's chromium (driven by playwright-core; a browser is
// never downloaded). CHROMIUM overrides the path.
export const LAUNCH = {
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync'],
};
