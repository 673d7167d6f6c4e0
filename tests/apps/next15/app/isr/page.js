// Incremental static regeneration: prerendered at build time, then rendered
// again at most once a second on request, inside the running release.
export const revalidate = 1;

export default function Isr() {
  return <main>rendered at {new Date().toISOString()}</main>;
}
