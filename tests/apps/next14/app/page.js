import Link from 'next/link';

export default function Home() {
  return (
    <main>
      <p>Welcome to the Next.js 14 fixture</p>
      <p>greeting: {process.env.FIXTURE_GREETING}</p>
      <Link href="/isr">ISR</Link> <Link href="/photo">photo</Link> <Link href="/lazy">lazy</Link>
    </main>
  );
}
