const path = require('path');

/** @type {import('next').NextConfig} */
module.exports = {
  output: 'standalone',
  // The monorepo's root: the build traces the workspace's node_modules and
  // packages/, and server.js lands in .next/standalone/apps/web/.
  outputFileTracingRoot: path.join(__dirname, '../..'),
};
