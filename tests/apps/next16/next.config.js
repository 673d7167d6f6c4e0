/** @type {import('next').NextConfig} */
module.exports = {
  output: 'standalone',
  // Pin the tracing root to this app so a lockfile in a parent directory
  // cannot change the layout of .next/standalone.
  outputFileTracingRoot: __dirname,
};
