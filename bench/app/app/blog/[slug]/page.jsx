import { notFound } from 'next/navigation';
import Card from '@/components/Card';
import { posts, getPost } from '@/lib/posts';

export function generateStaticParams() {
  return posts.map((p) => ({ slug: p.slug }));
}

export default async function Post({ params }) {
  const { slug } = await params;
  const post = getPost(slug);
  if (!post) notFound();
  return (
    <article>
      <h1>{post.title}</h1>
      <Card title="Post">
        <p>{post.body}</p>
      </Card>
    </article>
  );
}
