import Link from 'next/link';

// Pages Router: a link to a page whose chunk this tab has not loaded.
export default function Legacy() {
  return (
    <main>
      <h1 id="legacy">Legacy page of build {process.env.NEXT_PUBLIC_SKEW_BUILD}</h1>
      <Link href="/legacy-other" prefetch={false} id="legacy-link">
        Legacy other page
      </Link>
    </main>
  );
}
