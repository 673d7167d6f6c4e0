import './globals.css';
import Nav from '@/components/Nav';
import { APP_NAME } from '@/lib/version';

export const metadata = {
  title: APP_NAME,
  description: 'A small Next.js app used to benchmark deploys',
};

export default function RootLayout({ children }) {
  return (
    <html lang="en">
      <body>
        <Nav />
        <main>{children}</main>
      </body>
    </html>
  );
}
