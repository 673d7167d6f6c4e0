// A stand-in for the server.js that `next build` writes with output: 'standalone'.
// Plain Node, no dependencies: serves the page, public/ and .next/static/.
const http = require('http');
const fs = require('fs');
const path = require('path');

const port = Number(process.env.PORT || 3000);
const host = process.env.HOSTNAME || '127.0.0.1';
const types = { '.js': 'text/javascript', '.css': 'text/css', '.svg': 'image/svg+xml', '.txt': 'text/plain' };

function send(res, file) {
  fs.readFile(file, (err, body) => {
    if (err) { res.writeHead(404); res.end('not found'); return; }
    res.writeHead(200, { 'content-type': types[path.extname(file)] || 'application/octet-stream' });
    res.end(body);
  });
}

http.createServer((req, res) => {
  const url = decodeURIComponent(req.url.split('?')[0]);
  if (url.includes('..')) { res.writeHead(400); res.end(); return; }
  if (url === '/') {
    res.writeHead(200, { 'content-type': 'text/html' });
    res.end(`<!doctype html><link rel="stylesheet" href="/_next/static/css/app.css">
<h1>Hello from dropship</h1><img src="/logo.svg" alt="logo"><p>build ${fs.readFileSync(path.join(__dirname, '.next/BUILD_ID'), 'utf8').trim()}</p>
<script src="/_next/static/chunks/app.js"></script>`);
  } else if (url.startsWith('/_next/static/')) {
    send(res, path.join(__dirname, '.next/static', url.slice('/_next/static/'.length)));
  } else {
    send(res, path.join(__dirname, 'public', url));
  }
}).listen(port, host, () => console.log(`ready on http://${host}:${port}`));
