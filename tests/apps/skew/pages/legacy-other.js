export default function LegacyOther() {
  return <p id="legacy-other">Legacy other page of build {process.env.NEXT_PUBLIC_SKEW_BUILD}</p>;
}
