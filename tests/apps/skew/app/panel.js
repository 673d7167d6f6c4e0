'use client';

export default function Panel() {
  return <p id="panel">Panel of build {process.env.NEXT_PUBLIC_SKEW_BUILD}</p>;
}
