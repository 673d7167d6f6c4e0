'use client';

export default function Lazy() {
  return <p>loaded lazily in the browser</p>;
}
