import Image from 'next/image';

// next/image: the browser asks /_next/image?url=/images/gradient.png&w=…&q=75,
// which the image optimizer (sharp) resizes and caches in .next/cache/images.
export default function Photo() {
  return (
    <main>
      <p>A photo from public/</p>
      <Image src="/images/gradient.png" alt="gradient" width={320} height={240} />
    </main>
  );
}
