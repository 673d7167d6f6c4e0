import Counter from '@/components/Counter';

export default function CounterPage() {
  return (
    <>
      <h1>Counter</h1>
      <Counter start={1} />
    </>
  );
}
