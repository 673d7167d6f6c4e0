export const posts = [
  { slug: 'hello-world', title: 'Hello, world', body: 'The first post of the bench app. Nothing to see here yet.' },
  { slug: 'deploy-notes', title: 'Deploy notes', body: 'Release directories are immutable; the current symlink moves atomically.' },
  { slug: 'zero-downtime', title: 'Zero downtime', body: 'Start the new release, check its health, then switch traffic and stop the old one.' },
];

export function getPost(slug) {
  return posts.find((p) => p.slug === slug);
}
