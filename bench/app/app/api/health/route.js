import { APP_VERSION } from '@/lib/version';

export const dynamic = 'force-dynamic';

export async function GET() {
  return Response.json({
    status: 'ok',
    appVersion: APP_VERSION,
    release: process.env.RELEASE || null,
    pid: process.pid,
    uptimeSec: Math.round(process.uptime()),
  });
}
