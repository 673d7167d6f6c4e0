import Image from 'next/image';

const photos = [1, 2, 3, 4];

export default function Gallery() {
  return (
    <>
      <h1>Gallery</h1>
      <div className="grid">
        {photos.map((n) => (
          <Image key={n} src={`/images/photo-${n}.png`} alt={`photo ${n}`} width={400} height={300} />
        ))}
      </div>
    </>
  );
}
