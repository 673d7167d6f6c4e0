import Image from 'next/image';
import Card from '@/components/Card';
import { posts } from '@/lib/posts';

export default function Home() {
  return (
    <>
      <h1>Welcome</h1>
      <Image src="/images/photo-1.png" alt="banner" width={800} height={600} priority />
      <Card title="Latest posts">
        <ul>
          {posts.map((p) => (
            <li key={p.slug}>
              <a href={`/blog/${p.slug}`}>{p.title}</a>
            </li>
          ))}
        </ul>
      </Card>
    </>
  );
}
