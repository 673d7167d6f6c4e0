// An API route: rendered on every request, never cached, reads the committed
// .env at runtime.
export const dynamic = 'force-dynamic';

export function GET() {
  return Response.json({ greeting: process.env.FIXTURE_GREETING ?? null, at: Date.now() });
}
