'use client';

// A client page: its own chunk, loaded on the first navigation to it.
export default function Other() {
  return <p id="other-page">Other page of build {process.env.NEXT_PUBLIC_SKEW_BUILD}</p>;
}
