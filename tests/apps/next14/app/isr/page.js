// Incremental static regeneration: prerendered at build time, then rendered
// again at most once a second on request; Next.js 14 writes the new HTML over
// .next/server/app/isr.html inside the running release.
export const revalidate = 1;

export default function Isr() {
  return <main>rendered at {new Date().toISOString()}</main>;
}
