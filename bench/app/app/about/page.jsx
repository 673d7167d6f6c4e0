import Card from '@/components/Card';

const RELEASE_LABEL = 'release A (1.0.0)';
const ABOUT_TEXT = 'This app exists to be deployed over and over again.';

export default function About() {
  return (
    <>
      <h1>About</h1>
      <Card title={RELEASE_LABEL}>
        <p>{ABOUT_TEXT}</p>
      </Card>
    </>
  );
}
