'use client';

import dynamic from 'next/dynamic';

// A client component in its own chunk, fetched by the browser after the page loads.
const Lazy = dynamic(() => import('./Lazy'), {
  ssr: false,
  loading: () => <p>loading…</p>,
});

export default function LazyPage() {
  return (
    <main>
      <p>A lazily loaded component</p>
      <Lazy />
    </main>
  );
}
