import Link from 'next/link';
import LazyPanel from './lazy-panel';

// Built twice with a different SKEW_BUILD: every chunk below differs.
export default function Home() {
  return (
    <main>
      <h1>Page of build {process.env.NEXT_PUBLIC_SKEW_BUILD}</h1>
      <LazyPanel />
      <Link href="/other" id="other">
        Other page
      </Link>
    </main>
  );
}
