import Link from 'next/link';

const links = [
  ['/', 'Home'],
  ['/about', 'About'],
  ['/blog/hello-world', 'Blog'],
  ['/gallery', 'Gallery'],
  ['/counter', 'Counter'],
];

export default function Nav() {
  return (
    <nav className="nav">
      {links.map(([href, label]) => (
        <Link key={href} href={href}>
          {label}
        </Link>
      ))}
    </nav>
  );
}
