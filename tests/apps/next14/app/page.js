export default function Home() {
  return <main>Welcome to the Next.js 14 fixture</main>;
}
