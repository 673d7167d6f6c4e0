import Link from 'next/link';
import { badge } from '@fixture/ui';

export const dynamic = 'force-dynamic';

export default function Home() {
  return (
    <main>
      <p>Welcome to the monorepo fixture</p>
      <p>greeting: {process.env.FIXTURE_GREETING}</p>
      <p>badge: {badge}</p>
      <Link href="/isr">ISR</Link> <Link href="/photo">photo</Link> <Link href="/lazy">lazy</Link>
    </main>
  );
}
